// Blocks a request whose messages mention a word from the entry's config
// (`config: {word: "..."}`, default "forbidden"); lets the others through.
import { Host } from "@extism/as-pdk";
import { JSON } from "assemblyscript-json/assembly";
import { answer } from "./lib/protocol";

export function handle(): i32 {
  // Input: {"body": {...}, "metadata": {...}, "session_id": "...", "config": {...}}
  const input = <JSON.Obj>JSON.parse(Host.inputString());
  let word = "forbidden";
  const config = input.getObj("config");
  if (config != null) {
    const configured = config.getString("word");
    if (configured != null) word = configured.valueOf();
  }
  const body = input.getObj("body");
  const messages = body != null ? body.getArr("messages") : null;
  if (messages != null) {
    const items = messages.valueOf();
    for (let i = 0; i < items.length; i++) {
      if (!items[i].isObj) continue;
      const content = (<JSON.Obj>items[i]).getString("content");
      if (content != null && content.valueOf().toLowerCase().includes(word.toLowerCase())) {
        // Output: {"action", "status_code", "error_type", "message"} for a block.
        const reason = new JSON.Str("message " + i.toString() + " mentions " + word);
        answer('{"action":"block","status_code":403,"error_type":"keyword_blocked","message":' + reason.stringify() + "}");
        return 0;
      }
    }
  }
  answer('{"action":"passthrough"}');
  return 0;
}
