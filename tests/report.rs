//! The HTML report as a person sees it: rendered by headless Chromium
//! from the records of a migration (the fixture builders' four nodes, the
//! gate's decisions made by the real gate), a screenshot that is not
//! blank and a DOM with the nodes, the figures and the plots. No root.
use std::path::{Path, PathBuf};

use crossover_tests::browser;
use observer::migrate::report::{Report, fixtures};

fn written(name: &str, report: &Report) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("crossover-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join(format!("{name}.html"));
    std::fs::write(&page, report.html()).unwrap();
    page
}

/// The DOM, once the screenshot shows the page drawn: the banner, plots
/// and heatmaps cover a good part of it in many colours, where text alone
/// would be a few percent.
fn rendered(page: &Path) -> String {
    browser::rendered(page, 1100, 2400).unwrap()
}

#[test]
fn a_halted_migration_renders_with_the_pair_that_stopped_it() {
    let page = written("halted", &fixtures::halted_migration());
    let dom = rendered(&page);
    for node in fixtures::NODES {
        assert!(dom.contains(node), "{node} not in the page");
    }
    // The banner names the pair and the figure; the plots are there.
    assert!(
        dom.contains("Stopped at worker-3, step soak: worker-3 lost 5.20% of what"),
        "{dom}"
    );
    assert_eq!(
        dom.matches("<svg").count(),
        2 + 3 * 3,
        "timeline, loss, 3 panels x 3 nodes"
    );
    assert!(dom.contains("threshold 2.00%") && dom.contains("probe_udp threshold 5.00%"));
    assert!(dom.contains("data-node=\"worker-3\""));
    assert!(dom.contains("<code>crossover migrate rollback worker-3</code>"));
    assert!(dom.contains("6m 51s"), "the duration");
}

#[test]
fn a_completed_migration_renders_every_move() {
    let page = written("completed", &fixtures::completed_migration());
    let dom = rendered(&page);
    assert!(dom.contains("<span class=\"badge\">done</span>"), "{dom}");
    // Three panels a node (before, during, after); worker-3 a fourth,
    // the closed gate.
    assert_eq!(dom.matches("<svg").count(), 2 + 3 * 3 + 4, "{dom}");
    assert!(dom.contains("when the gate closed") && dom.contains("after (soak passed)"));
    assert!(dom.contains("All 4 nodes migrated to Cilium"));
}
