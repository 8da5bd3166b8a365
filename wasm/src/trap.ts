// Traps on every call (an out-of-bounds read aborts, and abort traps).
import "./lib/protocol";

export function handle(): i32 {
  const values = new Array<i32>(2);
  return values[5];
}
