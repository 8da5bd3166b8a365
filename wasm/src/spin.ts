// A runaway plugin on demand: loops forever when the body has "spin": true, else lets it through.
import { Host } from "@extism/as-pdk";
import { JSON } from "assemblyscript-json/assembly";
import { answer } from "./lib/protocol";

let turns: u64 = 0;

export function handle(): i32 {
  const input = <JSON.Obj>JSON.parse(Host.inputString());
  const body = input.getObj("body");
  const spin = body != null ? body.getBool("spin") : null;
  if (spin != null && spin.valueOf()) {
    while (true) {
      turns++;
    }
  }
  answer('{"action":"passthrough"}');
  return 0;
}
