//! `kiln serve` on a free loopback port of its own, killed on drop.

use std::process::Stdio;
use std::time::Duration;

use super::{Profile, Spawned};

pub struct Api {
    _serve: Spawned,
    pub url: String,
}

impl Api {
    /// Start `kiln serve` for `p` and wait until it answers.
    pub fn start(p: &Profile) -> Api {
        let port = super::free_port();
        let serve = Spawned::start(
            "kiln serve",
            p.command()
                .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let api = Api {
            _serve: serve,
            url: format!("http://127.0.0.1:{port}"),
        };
        super::wait_until("kiln serve to answer", 30, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        api
    }

    /// GET `path`: status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::blocking::Client::new()
            .get(format!("{}{path}", self.url))
            .timeout(Duration::from_secs(120))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }
}
