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

// StreamReply narrows on `kind`: chunks on a release, block on a block, answer on done.
export async function relay(client: RingdClient, events: string[], write: (line: string) => void): Promise<number> {
  const stream = client.streamRing({ body: { model: 'm', stream: true } });
  for (const event of events) {
    stream.send(event);
    const reply = await stream.recv();
    if (reply === undefined) return 500;
    if (reply.kind === 'block') return reply.releasedChunks === 0 ? reply.block.statusCode : 200;
    if (reply.kind === 'done') return 200;
    // @ts-expect-error answer exists only on done
    void reply.answer;
    for (const chunk of reply.chunks) write(`data: ${chunk.toString('utf8')}\n\n`);
  }
  stream.end();
  for await (const reply of stream) {
    if (reply.kind === 'done') return reply.answer.object === 'chat.completion' ? 200 : 502;
  }
  return 500;
}
