// Lets every request through unchanged: the cheapest possible plugin (the benchmark's baseline).
import { answer } from "./lib/protocol";

export function handle(): i32 {
  answer('{"action":"passthrough"}');
  return 0;
}
