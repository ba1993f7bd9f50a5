// The wire profile a runtime part speaks when its caller does not say: `DYN_WIRE_PROFILE` (the env var of the
// worker's `--dynamo-wire` setting), else 0.8. Like DYN_TCP_RPC_HOST / DYN_REQUEST_PLANE for the planes, this lets a
// process that builds its parts without a resolved config (a test, the frontend) follow the same setting.
import { DEFAULT_WIRE_PROFILE, parseWireProfile, type WireProfile } from '../protocol/wire-profile.js';

export function wireProfileFromEnv(env: NodeJS.ProcessEnv = process.env): WireProfile {
  const raw = env.DYN_WIRE_PROFILE;
  return raw === undefined || raw.trim() === '' ? DEFAULT_WIRE_PROFILE : parseWireProfile(raw, 'DYN_WIRE_PROFILE');
}
