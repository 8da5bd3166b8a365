// Allocates 1 MiB blocks and keeps them until the host's memory limit stops it.
import "./lib/protocol";

const hoard = new Array<ArrayBuffer>();

export function handle(): i32 {
  while (true) {
    hoard.push(new ArrayBuffer(1 << 20));
  }
  return 0;
}
