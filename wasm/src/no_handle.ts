// A valid module without the `handle` export: ringd refuses to load it.
import { answer } from "./lib/protocol";

export function process(): i32 {
  answer('{"action":"passthrough"}');
  return 0;
}
