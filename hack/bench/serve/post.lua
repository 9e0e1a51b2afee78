-- wrk script: POST the same body (read from the file named by BODY_FILE) to every request.
-- With HEADER_LENGTH set the body is binary tensor data: a JSON header of that many bytes,
-- then raw tensor bytes (the Open Inference Protocol's Inference-Header-Content-Length form).
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
local header_length = os.getenv("HEADER_LENGTH")
if header_length ~= nil and header_length ~= "" then
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = header_length
else
  wrk.headers["Content-Type"] = "application/json"
end
