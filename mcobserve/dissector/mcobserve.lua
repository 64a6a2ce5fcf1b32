-- mcobserve.lua: Wireshark/tshark dissector for Observe Notifications as CoAP Multicast Responses
-- (draft-ietf-core-observe-multicast-notifications) and its proxy companion
-- (draft-ietf-core-multicast-notifications-proxy), shipped with mcobserve.
--
-- A post-dissector on every CoAP message that decodes:
--   * the informative-response payload (Content-Format 65000 by default, draft §4.2): every key of the
--     "Informative Response Parameters" table (draft §11: 0 tp_info .. 17 exp), unknown keys as CBOR
--     diagnostic notation; CRIs (tpi_server, tpi_client) as URIs; ph_req / last_notif as CoAP summaries;
--   * the Feedback-Divider option (18 by default, draft §7, §8);
--   * the Listen-To-Multicast-Responses option (47 by default, proxy draft §3): its tp_info.
-- The code points are not assigned by IANA yet: Preferences > Protocols > MCOBSERVE changes them
-- (tshark: -o mcobserve.content_format:65000 -o mcobserve.feedback_divider:18 -o mcobserve.ltmr:47).
-- UDP port 61616 (the draft's example group port) is decoded as CoAP too (preference group_ports).
--
-- Install: `mcobserve dissector install` (copies this file to Wireshark's personal Lua plugins folder)
-- or `tshark -X lua_script:$(mcobserve dissector path) ...`. Display filters: mcobserve,
-- mcobserve.ir.tp_info.tpi_client, mcobserve.feedback_divider, mcobserve.ltmr.tpi_client, ...

local mcobserve = Proto("mcobserve", "Observe Notifications as CoAP Multicast Responses")

mcobserve.prefs.content_format = Pref.uint("Informative response Content-Format", 65000,
    "Content-Format of application/informative-response+cbor (not assigned yet)")
mcobserve.prefs.feedback_divider = Pref.uint("Feedback-Divider option", 18, "option number (not assigned yet)")
mcobserve.prefs.ltmr = Pref.uint("Listen-To-Multicast-Responses option", 47, "option number (not assigned yet)")
mcobserve.prefs.group_ports = Pref.string("Group ports decoded as CoAP", "61616", "comma-separated UDP ports")

local PARAMS = {
    [0] = "tp_info", [1] = "ph_req", [2] = "last_notif", [3] = "next_not_before", [4] = "ending",
    [5] = "join_uri", [6] = "sec_gp", [7] = "as_uri", [8] = "hkdf", [9] = "cred_fmt", [10] = "gp_enc_alg",
    [11] = "sign_alg", [12] = "sign_params", [13] = "gp_material", [14] = "srv_cred",
    [15] = "srv_identifier", [16] = "exi", [17] = "exp",
}
local SCHEMES = { [0] = "coap", [1] = "coaps", [2] = "http", [3] = "https", [4] = "urn", [5] = "did",
    [6] = "coap+tcp", [7] = "coaps+tcp", [24] = "coap+ws", [25] = "coaps+ws" }

local f = mcobserve.fields
f.ir = ProtoField.bytes("mcobserve.ir", "Informative response")
f.ir_key = ProtoField.string("mcobserve.ir.key", "Parameter")
f.tpi_server = ProtoField.string("mcobserve.ir.tp_info.tpi_server", "tpi_server")
f.tpi_client = ProtoField.string("mcobserve.ir.tp_info.tpi_client", "tpi_client")
f.tpi_token = ProtoField.bytes("mcobserve.ir.tp_info.tpi_token", "tpi_token")
f.ph_req = ProtoField.bytes("mcobserve.ir.ph_req", "ph_req")
f.ph_req_code = ProtoField.string("mcobserve.ir.ph_req.code", "ph_req code")
f.last_notif = ProtoField.bytes("mcobserve.ir.last_notif", "last_notif")
f.last_notif_code = ProtoField.string("mcobserve.ir.last_notif.code", "last_notif code")
f.last_notif_observe = ProtoField.uint32("mcobserve.ir.last_notif.observe", "last_notif Observe")
f.last_notif_payload = ProtoField.bytes("mcobserve.ir.last_notif.payload", "last_notif payload")
f.next_not_before = ProtoField.uint64("mcobserve.ir.next_not_before", "next_not_before")
f.ending = ProtoField.string("mcobserve.ir.ending", "ending")
f.join_uri = ProtoField.string("mcobserve.ir.join_uri", "join_uri")
f.sec_gp = ProtoField.string("mcobserve.ir.sec_gp", "sec_gp")
f.as_uri = ProtoField.string("mcobserve.ir.as_uri", "as_uri")
f.hkdf = ProtoField.string("mcobserve.ir.hkdf", "hkdf")
f.cred_fmt = ProtoField.int64("mcobserve.ir.cred_fmt", "cred_fmt")
f.gp_enc_alg = ProtoField.string("mcobserve.ir.gp_enc_alg", "gp_enc_alg")
f.sign_alg = ProtoField.string("mcobserve.ir.sign_alg", "sign_alg")
f.sign_params = ProtoField.string("mcobserve.ir.sign_params", "sign_params")
f.gp_material = ProtoField.string("mcobserve.ir.gp_material", "gp_material")
f.srv_cred = ProtoField.bytes("mcobserve.ir.srv_cred", "srv_cred")
f.srv_identifier = ProtoField.bytes("mcobserve.ir.srv_identifier", "srv_identifier")
f.exi = ProtoField.uint64("mcobserve.ir.exi", "exi")
f.exp = ProtoField.string("mcobserve.ir.exp", "exp")
f.unknown = ProtoField.string("mcobserve.ir.unknown", "Unknown parameter")
f.feedback_divider = ProtoField.uint32("mcobserve.feedback_divider", "Feedback-Divider")
f.ltmr = ProtoField.bytes("mcobserve.ltmr", "Listen-To-Multicast-Responses")
f.ltmr_server = ProtoField.string("mcobserve.ltmr.tpi_server", "tpi_server")
f.ltmr_client = ProtoField.string("mcobserve.ltmr.tpi_client", "tpi_client")
f.ltmr_token = ProtoField.bytes("mcobserve.ltmr.tpi_token", "tpi_token")
f.error = ProtoField.string("mcobserve.error", "Malformed")

local udp_payload = Field.new("udp.payload")
local coap_code = Field.new("coap.code")

-- CBOR ---------------------------------------------------------------------------------------------
-- decode(tvb, off) -> item, next_off. Items: {t="uint"|"nint"|"bytes"|"text"|"array"|"map"|"tag"|
-- "simple"|"float", v=..., off=, len=} (bytes/text keep their range). Errors raise a string.

local MAX_DEPTH = 16

local function read_uint(tvb, off, n)
    local v = 0
    for i = 0, n - 1 do v = v * 256 + tvb(off + i, 1):uint() end
    return v
end

local function half_float(h)
    local sign = (h >= 0x8000) and -1 or 1
    local e = math.floor(h / 1024) % 32
    local m = h % 1024
    if e == 0 then return sign * m * 2 ^ -24 end
    if e == 31 then return (m == 0) and sign * math.huge or 0 / 0 end
    return sign * (1 + m / 1024) * 2 ^ (e - 15)
end

local decode

decode = function(tvb, off, depth)
    depth = depth or 0
    if depth > MAX_DEPTH then error("CBOR nested too deeply") end
    if off >= tvb:len() then error("CBOR item missing at offset " .. off) end
    local ib = tvb(off, 1):uint()
    local major, ai = math.floor(ib / 32), ib % 32
    local p = off + 1
    local arg
    if ai < 24 then arg = ai
    elseif ai <= 27 then
        local n = ({ [24] = 1, [25] = 2, [26] = 4, [27] = 8 })[ai]
        if p + n > tvb:len() then error("CBOR argument truncated at offset " .. off) end
        if major == 7 and ai >= 25 then
            local v
            if ai == 25 then v = half_float(read_uint(tvb, p, 2))
            else v = tvb(p, n):float() end
            return { t = "float", v = v, off = off, len = 1 + n }, p + n
        end
        arg = read_uint(tvb, p, n)
        p = p + n
    else
        error("indefinite length or reserved CBOR item at offset " .. off)
    end
    if major == 0 then return { t = "uint", v = arg, off = off, len = p - off }, p end
    if major == 1 then return { t = "nint", v = -1 - arg, off = off, len = p - off }, p end
    if major == 2 or major == 3 then
        if p + arg > tvb:len() then error("CBOR string runs past the end at offset " .. off) end
        local item = { t = (major == 2) and "bytes" or "text", off = p, len = arg }
        if major == 3 then item.v = (arg > 0) and tvb(p, arg):string(ENC_UTF_8) or "" end
        return item, p + arg
    end
    if major == 4 then
        local items = {}
        for i = 1, arg do items[i], p = decode(tvb, p, depth + 1) end
        return { t = "array", v = items, off = off, len = p - off }, p
    end
    if major == 5 then
        local pairs_ = {}
        for i = 1, arg do
            local k, v
            k, p = decode(tvb, p, depth + 1)
            v, p = decode(tvb, p, depth + 1)
            pairs_[i] = { k, v }
        end
        return { t = "map", v = pairs_, off = off, len = p - off }, p
    end
    if major == 6 then
        local inner
        inner, p = decode(tvb, p, depth + 1)
        return { t = "tag", tag = arg, v = inner, off = off, len = p - off }, p
    end
    local names = { [20] = "false", [21] = "true", [22] = "null", [23] = "undefined" }
    return { t = "simple", v = names[arg] or ("simple(" .. arg .. ")"), off = off, len = p - off }, p
end

local function hex(tvb, item)
    if item.len == 0 then return "" end
    return string.lower(tvb(item.off, item.len):bytes():tohex())
end

local function diag(tvb, item)
    local t = item.t
    if t == "uint" or t == "nint" then return string.format("%.0f", item.v) end
    if t == "float" then return tostring(item.v) end
    if t == "bytes" then return "h'" .. hex(tvb, item) .. "'" end
    if t == "text" then return '"' .. item.v .. '"' end
    if t == "simple" then return item.v end
    if t == "tag" then return item.tag .. "(" .. diag(tvb, item.v) .. ")" end
    local out = {}
    if t == "array" then
        for i, x in ipairs(item.v) do out[i] = diag(tvb, x) end
        return "[" .. table.concat(out, ", ") .. "]"
    end
    for i, kv in ipairs(item.v) do out[i] = diag(tvb, kv[1]) .. ": " .. diag(tvb, kv[2]) end
    return "{" .. table.concat(out, ", ") .. "}"
end

-- CRI -> URI (CRI-no-local: [scheme-id, [?false, userinfo, host, ?port]] or flat [scheme-id, host..., ?port])

local function ip_text(tvb, item)
    if item.len == 4 then return tostring(tvb(item.off, 4):ipv4()) end
    if item.len == 16 then return "[" .. tostring(tvb(item.off, 16):ipv6()) .. "]" end
    error("host-ip of " .. item.len .. " bytes")
end

local function cri_uri(tvb, item)
    if item.t ~= "array" or #item.v < 2 or item.v[1].t ~= "nint" then error("a CRI is [scheme-id, authority]") end
    local number = -1 - item.v[1].v
    local scheme = SCHEMES[number] or ("scheme" .. number)
    local parts = {}
    if item.v[2].t == "array" then parts = item.v[2].v
    else for i = 2, #item.v do parts[#parts + 1] = item.v[i] end end
    local i, userinfo = 1, ""
    if parts[1] and parts[1].t == "simple" and parts[1].v == "false" then
        userinfo = (parts[2] and parts[2].v or "") .. "@"
        i = 3
    end
    local host, labels = nil, {}
    while parts[i] do
        local x = parts[i]
        if x.t == "bytes" and host == nil and #labels == 0 then
            host = ip_text(tvb, x)
            local zone = parts[i + 1]
            if x.len == 16 and zone and zone.t == "text" and not (parts[i + 2] == nil and zone.v:find("%.")) then
                host = string.sub(host, 1, -2) .. "%25" .. zone.v .. "]"  -- zone-id (RFC 6874)
                i = i + 1
            end
        elseif x.t == "text" and host == nil then labels[#labels + 1] = x.v
        else break end
        i = i + 1
    end
    if host == nil then host = table.concat(labels, ".") end
    local port = ""
    if parts[i] and parts[i].t == "uint" then port = ":" .. parts[i].v end
    return scheme .. "://" .. userinfo .. host .. port
end

-- CoAP messages ------------------------------------------------------------------------------------

local function code_text(c)
    return string.format("%d.%02d", math.floor(c / 32), c % 32)
end

-- options(tvb, off, stop) -> list of {number, off, len}, payload offset (or nil)
local function options(tvb, off, stop)
    local list, number = {}, 0
    while off < stop do
        local b = tvb(off, 1):uint()
        if b == 0xff then return list, off + 1 end
        local delta, len = math.floor(b / 16), b % 16
        off = off + 1
        if delta == 13 then delta = 13 + tvb(off, 1):uint(); off = off + 1
        elseif delta == 14 then delta = 269 + read_uint(tvb, off, 2); off = off + 2
        elseif delta == 15 then error("option delta 15") end
        if len == 13 then len = 13 + tvb(off, 1):uint(); off = off + 1
        elseif len == 14 then len = 269 + read_uint(tvb, off, 2); off = off + 2
        elseif len == 15 then error("option length 15") end
        number = number + delta
        if off + len > stop then error("option runs past the end") end
        list[#list + 1] = { number = number, off = off, len = len }
        off = off + len
    end
    return list, nil
end

-- a message without header and token (ph_req, last_notif: draft §4.2.2): code, options, payload
local function embedded(tvb, item, tree, field_code, field_observe, field_payload)
    if item.len < 1 then return end
    local off, stop = item.off, item.off + item.len
    local code = code_text(tvb(off, 1):uint())
    local sub = tree:add(field_code, tvb(off, 1), code)
    local opts, payload = options(tvb, off + 1, stop)
    for _, o in ipairs(opts) do
        if o.number == 6 and field_observe then
            tree:add(field_observe, tvb(o.off, math.max(o.len, 0)), (o.len > 0) and read_uint(tvb, o.off, o.len) or 0)
        end
    end
    if payload and payload < stop and field_payload then tree:add(field_payload, tvb(payload, stop - payload)) end
    return sub
end

local function tp_info(tvb, item, tree, fs)
    if item.t ~= "array" or #item.v < 1 then error("tp_info is not an array") end
    tree:add(fs.server, tvb(item.v[1].off, item.v[1].len), cri_uri(tvb, item.v[1]))
    if item.v[2] then tree:add(fs.client, tvb(item.v[2].off, item.v[2].len), cri_uri(tvb, item.v[2])) end
    if item.v[3] and item.v[3].t == "bytes" then tree:add(fs.token, tvb(item.v[3].off, item.v[3].len)) end
end

local TP_IR = { server = f.tpi_server, client = f.tpi_client, token = f.tpi_token }
local TP_LTMR = { server = f.ltmr_server, client = f.ltmr_client, token = f.ltmr_token }

local function range_of(tvb, item)
    return tvb(item.off, math.max(item.len, 0))
end

local function informative(tvb, off, stop, tree)
    local sub = tree:add(f.ir, tvb(off, stop - off))
    sub:set_text("Informative response (draft §4.2)")
    local map, after = decode(tvb, off)
    if map.t ~= "map" then error("the informative response is not a CBOR map") end
    if after ~= stop then error((stop - after) .. " bytes after the CBOR map") end
    for _, kv in ipairs(map.v) do
        local k, v = kv[1], kv[2]
        local name = (k.t == "uint") and PARAMS[k.v] or nil
        local r = tvb(k.off, v.off + v.len - k.off)
        if name == nil then
            sub:add(f.unknown, r, diag(tvb, k) .. ": " .. diag(tvb, v))
        elseif name == "tp_info" then
            local t = sub:add(f.ir_key, r, "tp_info (0)")
            tp_info(tvb, v, t, TP_IR)
        elseif name == "ph_req" or name == "last_notif" then
            local fb = (name == "ph_req") and f.ph_req or f.last_notif
            local t = sub:add(fb, range_of(tvb, v))
            if name == "ph_req" then embedded(tvb, v, t, f.ph_req_code)
            else embedded(tvb, v, t, f.last_notif_code, f.last_notif_observe, f.last_notif_payload) end
        elseif name == "srv_cred" or name == "srv_identifier" then
            sub:add(f[name], range_of(tvb, v))
        elseif name == "next_not_before" or name == "exi" then
            sub:add(f[name], r, UInt64(v.v))
        elseif name == "cred_fmt" then
            sub:add(f[name], r, Int64(v.v))
        elseif name == "join_uri" or name == "sec_gp" or name == "as_uri" then
            sub:add(f[name], r, (v.t == "text") and v.v or diag(tvb, v))
        else
            sub:add(f[name], r, diag(tvb, v))
        end
    end
end

function mcobserve.dissector(tvb, pinfo, tree)
    if coap_code() == nil then return end
    local infos = { udp_payload() }
    local fi = infos[#infos]
    if fi == nil then return end
    local msg = fi.range:tvb()
    local len = msg:len()
    if len < 4 then return end
    local tkl = msg(0, 1):uint() % 16
    if tkl > 8 then return end
    local code = msg(1, 1):uint()
    local ok, opts, payload = pcall(options, msg, 4 + tkl, len)
    if not ok then return end
    local cf, fd, ltmr = nil, nil, nil
    for _, o in ipairs(opts) do
        if o.number == 12 then cf = (o.len > 0) and read_uint(msg, o.off, o.len) or 0 end
        if o.number == mcobserve.prefs.feedback_divider then fd = o end
        if o.number == mcobserve.prefs.ltmr then ltmr = o end
    end
    local is_ir = cf == mcobserve.prefs.content_format and payload ~= nil and payload < len
    if not (is_ir or fd or ltmr) then return end
    local root = tree:add(mcobserve, msg(0, len))
    local good, err = pcall(function()
        if fd then
            local v = (fd.len > 0) and read_uint(msg, fd.off, fd.len) or 0
            root:add(f.feedback_divider, msg(fd.off, fd.len), v)
            pinfo.cols.info:append(" Feedback-Divider: " .. v)
        end
        if ltmr then
            local t = root:add(f.ltmr, msg(ltmr.off, ltmr.len))
            local item, after = decode(msg, ltmr.off)
            if after ~= ltmr.off + ltmr.len then error("bytes after the tp_info array in the option") end
            tp_info(msg, item, t, TP_LTMR)
            pinfo.cols.info:append(" Listen-To-Multicast-Responses")
        end
        if is_ir then
            informative(msg, payload, len, root)
            pinfo.cols.info:append(" [informative response " .. code_text(code) .. "]")
        end
    end)
    if not good then
        root:add(f.error, tostring(err)):add_expert_info(PI_MALFORMED, PI_ERROR, tostring(err))
    end
end

register_postdissector(mcobserve)

function mcobserve.prefs_changed()
    local udp = DissectorTable.get("udp.port")
    local coap = Dissector.get("coap")
    for port in string.gmatch(mcobserve.prefs.group_ports, "%d+") do udp:add(tonumber(port), coap) end
end

mcobserve.prefs_changed()
