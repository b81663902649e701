-- Request guard of the front proxy (a Helm template, rendered into the proxy ConfigMap; docs/reliability.md).
-- HTTP: Triton's JSON parser (2.51 up to r26.04) recurses once per nesting level, and ~1 MiB of
-- "[[[[..." crashed the server: nesting deeper than MAX_DEPTH is refused before Triton parses
-- anything. Triton answers JSON it cannot parse with 500 in every release: made 400 here.
-- gRPC: ModelInfer requests naming an internal model are refused (they reach Triton only through
-- the pipeline's BLS calls, inside the pod); so are compressed messages, whose model name the
-- proxy cannot read.
local MAX_DEPTH = {{ int .Values.proxy.maxJsonDepth }}
local INTERNAL = { {{- range .Values.proxy.internalModels }}["{{ . }}"] = true, {{ end -}} }

local function refuse_http(handle, status, message)
  handle:respond({[":status"] = status, ["content-type"] = "application/json"}, '{"error":"' .. message .. '"}')
end

local function refuse_grpc(handle, code, message)
  handle:respond({[":status"] = "200", ["content-type"] = "application/grpc", ["grpc-status"] = code,
                  ["grpc-message"] = message}, "")
end

-- The model_name of a serialized ModelInferRequest (field 1, written first), or nil.
local function grpc_model_name(body)
  local n = body:length()
  if n < 7 then return nil end
  local head = body:getBytes(0, math.min(n, 300))
  if head:byte(1) ~= 0 then return false end  -- compressed message
  if head:byte(6) ~= 10 then return nil end  -- tag of field 1, length-delimited
  local len, shift, i = 0, 0, 7
  repeat
    local b = head:byte(i)
    if b == nil then return nil end
    len = len + (b % 128) * (2 ^ shift)
    shift, i = shift + 7, i + 1
  until b < 128
  return head:sub(i, i + len - 1)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local path = headers:get(":path") or ""
  if path == "/inference.GRPCInferenceService/ModelInfer" then
    local body = handle:body()
    if body == nil then return end
    local model = grpc_model_name(body)
    if model == false then
      refuse_grpc(handle, "12", "compressed requests are not accepted")  -- UNIMPLEMENTED
    elseif model ~= nil and INTERNAL[model] then
      refuse_grpc(handle, "7", "model '" .. model .. "' is internal")  -- PERMISSION_DENIED
    end
    return
  end
  if not path:find("/infer", 1, true) then return end
  -- Headers first: body() waits for the whole body, and the headers object is invalid after it.
  local json_length = tonumber(headers:get("inference-header-content-length") or "")
  local body = handle:body()
  if body == nil then return end
  local n = body:length()
  if json_length ~= nil and json_length < n then n = json_length end
  local s = body:getBytes(0, n)
  local depth, in_string, escaped = 0, false, false
  for i = 1, #s do
    local b = s:byte(i)
    if in_string then
      if escaped then escaped = false elseif b == 92 then escaped = true elseif b == 34 then in_string = false end
    elseif b == 34 then in_string = true
    elseif b == 91 or b == 123 then
      depth = depth + 1
      if depth > MAX_DEPTH then
        refuse_http(handle, "400", "request JSON nested deeper than " .. MAX_DEPTH .. " levels")
        return
      end
    elseif b == 93 or b == 125 then depth = depth - 1 end
  end
end

function envoy_on_response(handle)
  if handle:headers():get(":status") ~= "500" then return end
  local body = handle:body()
  if body == nil then return end
  local s = body:getBytes(0, math.min(body:length(), 512))
  if s:find("failed to parse the request JSON buffer", 1, true) or s:find("Unable to parse '", 1, true) then
    handle:headers():replace(":status", "400")
  end
end
