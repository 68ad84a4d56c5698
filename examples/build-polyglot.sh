#!/usr/bin/env bash
# Build the example plugins written in Python and JavaScript into
# target/guests/polyglot/, where tests/polyglot.rs expects them. Cargo builds
# the Rust examples itself; run this before `cargo test`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/python-validator/build.sh"
"$here/js-rewriter/build.sh"
