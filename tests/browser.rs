//! The web UI in a real browser: `starling up` serves it, and `tests/browser/ui.test.mjs`
//! drives Debian's Chromium through npm `playwright-core` (never a downloaded browser):
//! two users sign up, one follows the other, the followee posts, and the post appears in
//! the follower's timeline without a reload; then `/traces` shows that post's trace as a
//! waterfall with spans from the gateway and the services it went through.
//!
//! Needs `chromium` and `node` (scripts/install-deps.sh installs them) and
//! `tests/browser/node_modules` (`npm ci` there; this test runs it when it is missing).
//! Off CI a missing piece skips the test loudly; under `CI=true` it fails.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::up::*;
use common::*;

/// The whole browser scenario (each of its steps is bounded by 30 s in the script).
const NODE_TIMEOUT: Duration = Duration::from_secs(240);
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(300);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `npm ci` in tests/browser when its node_modules is missing. `false`: skip (off CI).
async fn ensure_node_modules() -> bool {
    let dir = browser_dir();
    if dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return true;
    }
    let Some(npm) = require_binary("npm") else {
        return false;
    };
    eprintln!("browser: running `npm ci` in {}", dir.display());
    let mut cmd = tokio::process::Command::new(npm);
    cmd.arg("ci")
        .args(["--no-audit", "--no-fund"])
        .current_dir(&dir);
    let failure = match run_bounded(cmd, NPM_CI_TIMEOUT).await {
        Ok(out) if out.status.success() => return true,
        Ok(out) => show(&out),
        Err(e) => e,
    };
    if ci() {
        panic!(
            "`npm ci` in {} failed, and CI=true forbids skipping:\n{failure}",
            dir.display()
        );
    }
    eprintln!("SKIPPED: `npm ci` in {} failed:\n{failure}", dir.display());
    false
}

#[tokio::test]
async fn web_ui_shows_a_followed_users_post_live() {
    let Some(chromium) = require_binary("chromium") else {
        return;
    };
    let Some(node) = require_binary("node") else {
        return;
    };
    if !ensure_node_modules().await {
        return;
    }
    // A browser and the whole app on 2 cores: keep other timing-sensitive tests out.
    let _serial = serial().await;

    let up = Up::start().await;
    let base = up.gateway_http();
    wait_ready(&base).await;

    let screenshot = std::env::var_os("STARLING_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-timeline.png"));
    let mut cmd = tokio::process::Command::new(node);
    cmd.arg(browser_dir().join("ui.test.mjs"))
        .arg(&base)
        .current_dir(browser_dir())
        .env("CHROMIUM", &chromium)
        .env("STARLING_SCREENSHOT", &screenshot);
    let out = match run_bounded(cmd, NODE_TIMEOUT).await {
        Ok(out) => out,
        Err(e) => panic!("browser test: {e}"),
    };
    println!("{}", show(&out));
    assert!(
        out.status.success(),
        "the browser scenario failed against {base} (screenshot: {}):\n{}",
        screenshot.display(),
        show(&out)
    );
    println!(
        "browser: screenshot of the follower's page: {}",
        screenshot.display()
    );

    up.stop().await;
}
