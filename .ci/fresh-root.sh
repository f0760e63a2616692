#!/usr/bin/env bash
# Runs the README's two quick-start commands in a brand-new Debian 12 root (debootstrap,
# minbase), as a new user's machine has them: nothing installed but what the project's own
# files install. A missing install step fails here, however much the host has installed.
#
#   bash .ci/fresh-root.sh            (as root; needs debootstrap, git and the host's apt mirror)
#
# The pristine root is cached as a tarball (FLOWLAB_FRESH_ROOT_CACHE) so that later runs skip
# the download; every run unpacks it into a new folder and removes that folder at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FLOWLAB_FRESH_ROOT_CACHE:-/var/tmp/flowlab-bookworm-minbase.tar}
root=$(mktemp -d /var/tmp/flowlab-fresh-root.XXXXXX)
log=$(mktemp /var/tmp/flowlab-fresh-root-log.XXXXXX)
cleanup() {
  umount "$root/proc" 2>/dev/null || true
  umount "$root/sys" 2>/dev/null || true
  rm -rf "$root" "$log"
}
trap cleanup EXIT

# The README's commands: the indented lines of its "Quick start" section that call bash or cmake.
mapfile -t commands < <(awk '/^## Quick start/ {inside = 1; next} /^## / {inside = 0}
  inside && /^    [^ ]/ && /(bash|cmake)/ {sub(/^    /, ""); print}' "$repo/README.md")
if [[ ${#commands[@]} -lt 2 ]]; then
  echo "fresh-root: README.md's Quick start section has no two commands to run" >&2
  exit 2
fi

if [[ ! -s $cache ]]; then
  # The Debian mirror the host's apt already uses (deb822 or one-line sources).
  mirror=$(grep -rhoE '^(URIs:|deb) +[a-z]+://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
           awk '{print $2}' | grep -vE 'security|updates' | grep -E '/debian/?$' | head -n 1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "fresh-root: debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$log" 2>&1 || { tail -n 30 "$log"; exit 1; }
  tar -C "$root" -cf "$cache.tmp" . && mv "$cache.tmp" "$cache"
else
  tar -C "$root" -xf "$cache"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mkdir -p "$root/srv"
git clone -q "$repo" "$root/srv/flowlab"

step=0
for cmd in "${commands[@]:0:2}"; do
  step=$((step + 1))
  echo "fresh-root: README command $step: $cmd"
  start=$(date +%s)
  if ! chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
         /bin/bash -c "cd /srv/flowlab && $cmd" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fresh-root: README command $step failed on a fresh Debian 12 root"
    exit 1
  fi
  echo "fresh-root: README command $step passed in $(( $(date +%s) - start )) s"
  # The quickstart's summary, or the test run's closing lines.
  if [[ $step == 1 ]]; then grep -A3 -E '^quickstart: ' "$log" || true; else grep -E 'tests passed|tests failed|Total Test time' "$log" || true; fi
done
echo "fresh-root: both README commands pass on a fresh Debian 12"
