// Fetches `config.url` with Extism's HTTP request function: allowed only for hosts the
// entry grants in `wasm.allowed_hosts`. Answers passthrough with the size it read.
import { Host, Memory } from "@extism/as-pdk";
import { http_request, length } from "@extism/as-pdk/lib/env";
import { JSON } from "assemblyscript-json/assembly";
import { answer } from "./lib/protocol";

export function handle(): i32 {
  const input = <JSON.Obj>JSON.parse(Host.inputString());
  const config = input.getObj("config");
  const url = config != null ? config.getString("url") : null;
  if (url == null) {
    answer('{"action":"passthrough"}');
    return 0;
  }
  const request = Memory.allocateString('{"method":"GET","url":' + new JSON.Str(url.valueOf()).stringify() + "}");
  const offset = http_request(request.offset, 0);
  const size = offset == 0 ? 0 : length(offset);
  const message = new JSON.Str("fetched " + size.toString() + " bytes");
  answer('{"action":"passthrough","message":' + message.stringify() + "}");
  return 0;
}
