// keyword_guard.ts: blocks a request whose messages mention the entry's `config.word`
// (default "forbidden"); lets every other request through unchanged.
import { Host } from "@extism/as-pdk";
import { JSON } from "assemblyscript-json/assembly";

// The host calls `handle` with {"body", "metadata", "session_id", "config"} as input.
export function handle(): i32 {
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
        const reason = new JSON.Str("message " + i.toString() + " mentions " + word);
        answer(
          '{"action":"block","status_code":403,"error_type":"keyword_blocked","message":' +
            reason.stringify() + "}",
        );
        return 0;
      }
    }
  }
  answer('{"action":"passthrough"}');
  return 0;
}

// The output: {"action", "body", "status_code", "error_type", "message"}, as UTF-8 JSON.
function answer(json: string): void {
  Host.output(Uint8Array.wrap(String.UTF8.encode(json)));
}

// The runtime's abort (failed assertion, bad index, no memory) must trap, not return:
// build with `--use abort=keyword_guard/trapOnAbort`.
function trapOnAbort(message: string | null, file: string | null, line: u32, column: u32): void {
  unreachable();
}
