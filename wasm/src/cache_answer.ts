// Answers every request from "cache": a CACHE_HIT whose response names the session.
import { Host } from "@extism/as-pdk";
import { JSON } from "assemblyscript-json/assembly";
import { answer } from "./lib/protocol";

export function handle(): i32 {
  const input = <JSON.Obj>JSON.parse(Host.inputString());
  const session = input.getString("session_id");
  const who = new JSON.Str(session != null ? session.valueOf() : "");
  answer(
    '{"action":"cache_hit","message":"served by the wasm cache","response":{"object":"chat.completion",' +
      '"choices":[{"index":0,"message":{"role":"assistant","content":"cached answer"}}],"session":' +
      who.stringify() + "}}",
  );
  return 0;
}
