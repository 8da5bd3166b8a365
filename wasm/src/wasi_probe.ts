// build: wasi (compiled against WASI with @assemblyscript/wasi-shim; loads only with `wasm.wasi: true`)
// Reports what WASI shows it: whether the clock is readable and how many environment variables it sees.
import { Host } from "@extism/as-pdk";

export function handle(): i32 {
  const clock = Date.now() > 0 ? "readable" : "unreadable";
  const variables = process.env.size;
  const message = "clock " + clock + ", " + variables.toString() + " environment variables";
  Host.output(Uint8Array.wrap(String.UTF8.encode('{"action":"passthrough","message":"' + message + '"}')));
  return 0;
}
