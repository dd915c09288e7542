//! Planning speed: load the catalogue and expand the whole matrix (every
//! version of every series on every OS release), repeated.
//! Run: `cargo bench --bench plan`.

use std::path::PathBuf;
use std::time::Instant;

use kiln::plan::{self, Filter};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let runs = 20;
    let t = Instant::now();
    let mut n = 0;
    for _ in 0..runs {
        let cat = kiln::catalogue::load(&root.join("versions"), &root.join("platforms"))
            .expect("catalogue");
        n = plan::expand(
            &cat,
            &Filter {
                version: Some("all".into()),
                ..Default::default()
            },
        )
        .expect("plan")
        .len();
    }
    let per = t.elapsed() / runs;
    println!(
        "plan benchmark: load catalogue + expand {n} targets (every series): {:.1} ms per run ({runs} runs)",
        per.as_secs_f64() * 1000.0
    );
    let cat =
        kiln::catalogue::load(&root.join("versions"), &root.join("platforms")).expect("catalogue");
    let t = Instant::now();
    let ts = plan::expand(&cat, &Filter::default()).expect("plan");
    let reqs = plan::requirements(&ts, "kiln", |_| true);
    println!(
        "  policy plan: {} targets, {} required tags in {:.2} ms",
        ts.len(),
        reqs.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );
}
