// Answers with text that is not JSON.
import { answer } from "./lib/protocol";

export function handle(): i32 {
  answer("this is not json");
  return 0;
}
