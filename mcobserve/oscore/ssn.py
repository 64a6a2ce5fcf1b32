"""Sender Sequence Number allocation with a persisted ceiling (RFC 8613 App. B.1.1, GO §2.6).

The allocator persists a *ceiling* C: no number >= C has ever been used. Before handing out a number
n >= C it durably stores ``min(n + lead, max_ssn + 1)`` and only then returns n. After a restart, a new
allocator over the same store resumes at the stored ceiling, which is strictly above every number used
before (the write completed before any number below it was used, so no safety margin F is needed). At
exhaustion (``max_ssn``, by default 2^40-1, has been used) it raises
:class:`~mcobserve.oscore.errors.SequenceNumberExhaustedError` (GO §2.6.2).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from mcobserve.oscore.derive import MAX_SSN
from mcobserve.oscore.errors import SequenceNumberExhaustedError, SequenceNumberStoreError

#: Numbers reserved per write of the ceiling (K of RFC 8613 App. B.1.1).
DEFAULT_LEAD: Final = 1024
_FILE_MAGIC: Final = "mcobserve-ssn-ceiling 1"


@runtime_checkable
class SequenceNumberStore(Protocol):
    """Durable storage of the SSN ceiling (RFC 8613 App. B.1.1)."""

    def load(self) -> int | None:
        """The stored ceiling, or None if nothing was ever stored."""
        ...

    def store(self, ceiling: int) -> None:
        """Durably replace the ceiling; return only once it would survive a crash."""
        ...


class MemorySequenceNumberStore:
    """A :class:`SequenceNumberStore` in memory (tests, or contexts that never outlive the process).

    ``writes`` counts the calls to :meth:`store`.
    """

    def __init__(self, ceiling: int | None = None) -> None:
        self.ceiling = ceiling
        self.writes = 0

    def load(self) -> int | None:
        """The ceiling last stored (or given to the constructor)."""
        return self.ceiling

    def store(self, ceiling: int) -> None:
        """Keep ``ceiling``."""
        self.ceiling = ceiling
        self.writes += 1

    def __repr__(self) -> str:
        return f"MemorySequenceNumberStore(ceiling={self.ceiling})"


class FileSequenceNumberStore:
    """A :class:`SequenceNumberStore` in a small text file, replaced atomically on every write.

    Write: temporary file in the same directory, write, flush, fsync, ``os.replace`` onto the target,
    fsync of the directory. A missing file means "never stored"; an unreadable or corrupt one raises
    :class:`SequenceNumberStoreError` (a lost ceiling must stop protection, GO §2.6.1.1).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> int | None:
        """Read the ceiling; None if the file does not exist."""
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise SequenceNumberStoreError(f"cannot read the SSN ceiling from {self.path}: {exc}") from None
        lines = text.split("\n")
        if len(lines) != 3 or lines[0] != _FILE_MAGIC or lines[2] != "" or not lines[1].isdigit():
            raise SequenceNumberStoreError(f"{self.path} is not an SSN ceiling file")
        return int(lines[1])

    def store(self, ceiling: int) -> None:
        """Atomically and durably replace the file with ``ceiling``."""
        directory = self.path.parent
        data = f"{_FILE_MAGIC}\n{int(ceiling)}\n".encode("ascii")
        tmp_name: str | None = None
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, self.path)
            tmp_name = None
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise SequenceNumberStoreError(f"cannot persist the SSN ceiling to {self.path}: {exc}") from None
        finally:
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass

    def __repr__(self) -> str:
        return f"FileSequenceNumberStore({str(self.path)!r})"


class SenderSequenceNumber:
    """The Sender Sequence Number of a Sender Context, persisted ``lead`` numbers ahead (RFC 8613 B.1.1).

    ``store`` None means an in-memory store (nothing survives the process). ``max_ssn`` is the largest
    number that may be used (default 2^40-1, RFC 8613 §7.2.1; a lower configured limit is allowed).
    """

    def __init__(
        self,
        store: SequenceNumberStore | None = None,
        *,
        lead: int = DEFAULT_LEAD,
        max_ssn: int = MAX_SSN,
    ) -> None:
        if type(lead) is not int or lead < 1:
            raise ValueError("lead must be a positive integer")
        if type(max_ssn) is not int or not 0 <= max_ssn <= MAX_SSN:
            raise ValueError(f"max_ssn must be in 0..{MAX_SSN}")
        self._store: SequenceNumberStore = store if store is not None else MemorySequenceNumberStore()
        self.lead = lead
        self.max_ssn = max_ssn
        try:
            loaded = self._store.load()
        except SequenceNumberStoreError:
            raise
        except Exception as exc:  # a third-party store
            raise SequenceNumberStoreError(f"cannot load the SSN ceiling: {exc!r}") from exc
        if loaded is not None and (type(loaded) is not int or loaded < 0):
            raise SequenceNumberStoreError(f"stored SSN ceiling {loaded!r} is not a non-negative integer")
        #: Persisted ceiling: no number >= this one was ever handed out.
        self._ceiling = 0 if loaded is None else loaded
        self._next = self._ceiling

    @property
    def next_value(self) -> int:
        """The number :meth:`allocate` will return next (if not exhausted)."""
        return self._next

    @property
    def persisted_ceiling(self) -> int:
        """The ceiling currently in the store."""
        return self._ceiling

    @property
    def exhausted(self) -> bool:
        """True once ``max_ssn`` has been used (GO §2.6.2)."""
        return self._next > self.max_ssn

    def allocate(self) -> int:
        """Consume and return a fresh number, persisting a new ceiling first when needed."""
        n = self._next
        if n > self.max_ssn:
            raise SequenceNumberExhaustedError(
                f"Sender Sequence Number exhausted (limit {self.max_ssn}); a new Security Context is needed"
            )
        if n >= self._ceiling:
            ceiling = min(n + self.lead, self.max_ssn + 1)
            try:
                self._store.store(ceiling)
            except SequenceNumberStoreError:
                raise
            except Exception as exc:  # a third-party store: refuse to protect, typed
                raise SequenceNumberStoreError(f"cannot persist the SSN ceiling: {exc!r}") from exc
            self._ceiling = ceiling
        self._next = n + 1
        return n

    def __repr__(self) -> str:
        return (
            f"SenderSequenceNumber(next={self._next}, ceiling={self._ceiling}, lead={self.lead}, "
            f"max_ssn={self.max_ssn}, store={self._store!r})"
        )
