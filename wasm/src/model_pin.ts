// Rewrites the request's model to the entry's `config.model` (MODIFY with the new body).
import { Host } from "@extism/as-pdk";
import { JSON } from "assemblyscript-json/assembly";
import { answer } from "./lib/protocol";

export function handle(): i32 {
  const input = <JSON.Obj>JSON.parse(Host.inputString());
  const config = input.getObj("config");
  const model = config != null ? config.getString("model") : null;
  const body = input.getObj("body");
  if (model == null || body == null) {
    answer('{"action":"passthrough"}');
    return 0;
  }
  body.set("model", model.valueOf());
  const message = new JSON.Str("model pinned to " + model.valueOf());
  answer('{"action":"modify","body":' + body.stringify() + ',"message":' + message.stringify() + "}");
  return 0;
}
