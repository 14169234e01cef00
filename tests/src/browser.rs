//! Headless Chromium (Debian's `chromium`, installed by `cargo xtask
//! setup`): what a person would see of a page, as a screenshot, and the
//! DOM the browser built from it.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

fn chromium(args: &[&str]) -> Result<std::process::Output> {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            // Nothing from the network: the page must not need it.
            "--proxy-server=127.0.0.1:9",
            "--no-first-run",
        ])
        .args(args)
        .output()
        .context("running chromium (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!(
            "chromium {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn url(page: &Path) -> String {
    format!("file://{}", page.display())
}

/// A PNG of `page` at `width` x `height` CSS pixels.
pub fn screenshot(page: &Path, png: &Path, width: u32, height: u32) -> Result<()> {
    chromium(&[
        &format!("--screenshot={}", png.display()),
        &format!("--window-size={width},{height}"),
        &url(page),
    ])?;
    Ok(())
}

/// The DOM after the browser parsed and laid out `page`.
pub fn dump_dom(page: &Path) -> Result<String> {
    let out = chromium(&["--dump-dom", &url(page)])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Pixels of a PNG that are not its most common colour (the background),
/// and how many distinct colours it has.
pub fn ink(png: &Path) -> Result<(usize, usize, usize)> {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png).with_context(|| format!("opening {}", png.display()))?,
    ));
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("PNG too large")?];
    let info = reader.next_frame(&mut buf)?;
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let mut counts = std::collections::HashMap::<&[u8], usize>::new();
    for px in pixels.chunks_exact(channels) {
        *counts.entry(&px[..channels.min(3)]).or_default() += 1;
    }
    let total = pixels.len() / channels;
    let background = counts.values().copied().max().unwrap_or(0);
    Ok((total - background, counts.len(), total))
}

/// Renders `page` as a person would see it: its DOM, once a screenshot
/// of `width` x `height` shows drawings (at least a fifth of the pixels
/// off the background, in more than 200 colours), not a blank or an
/// error page. The PNG is kept beside the page.
pub fn rendered(page: &Path, width: u32, height: u32) -> Result<String> {
    let png = page.with_extension("png");
    screenshot(page, &png, width, height)?;
    let (ink, colours, total) = ink(&png)?;
    if ink <= total / 5 || colours <= 200 {
        bail!(
            "{}: {ink} of {total} pixels drawn, {colours} colours",
            png.display()
        );
    }
    dump_dom(page)
}
