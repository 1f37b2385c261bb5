#!/usr/bin/env bash
# Install Debian's headless Chromium for the browser test of `snptool report`, where it is
# missing and apt can; never fails (without it that test is skipped with the reason).
if command -v chromium > /dev/null || command -v chromium-browser > /dev/null; then
    exit 0
fi
if command -v apt-get > /dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        > /dev/null 2>&1 || echo "note: could not install chromium; the browser test will be skipped" >&2
else
    echo "note: no chromium and no root apt-get; the browser test will be skipped" >&2
fi
exit 0
