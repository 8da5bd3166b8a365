// Compiled by `tsc --strict` (test/packed.test.js): RingOutcome narrows on `action`, so a
// gateway reads `block` and `cachedResponse` without null checks once it has checked the
// action. The @ts-expect-error lines fail the compile if the union stops guarding them.
import { Action, RingdClient, type RingOutcome } from '@ringd/client';

export function answer(outcome: RingOutcome): { status: number; body: unknown } {
  if (outcome.action === 'block') {
    const { statusCode, errorType, message } = outcome.block;
    return { status: statusCode, body: { error: { type: errorType, message } } };
  }
  if (outcome.action === Action.CACHE_HIT) {
    const cached: object = outcome.cachedResponse;
    return { status: 200, body: cached };
  }
  const none: null = outcome.block;
  return { status: 200, body: outcome.body ?? none };
}

export function endedNarrowsToo(outcome: RingOutcome): number {
  if (outcome.ended && outcome.action !== 'cache_hit') return outcome.block.statusCode;
  return 200;
}

export function unchecked(outcome: RingOutcome): number {
  // @ts-expect-error block is null unless the action is 'block'
  return outcome.block.statusCode;
}

export function uncheckedCache(outcome: RingOutcome): object {
  // @ts-expect-error cachedResponse is null unless the action is 'cache_hit'
  return outcome.cachedResponse;
}

export async function call(client: RingdClient): Promise<number> {
  const [last] = (await client.executeRings(['ingress'], { body: { model: 'm' } })).slice(-1);
  return answer(last).status;
}
