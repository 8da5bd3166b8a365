// What every ringd WASM plugin shares: answering the host, and an abort that traps.
import { Host } from "@extism/as-pdk";

/** Sets `json` (a PluginResponse as JSON) as the call's output. */
export function answer(json: string): void {
  // Host.outputString sizes the output by UTF-16 length; encode to UTF-8 first.
  Host.output(Uint8Array.wrap(String.UTF8.encode(json)));
}

/**
 * The AssemblyScript runtime's `abort` (failed assertion, out-of-bounds access,
 * allocation failure), wired in with `--use abort=src/lib/protocol/trapOnAbort`:
 * it traps, so the host sees the call fail instead of the guest running on.
 */
export function trapOnAbort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  unreachable();
}
