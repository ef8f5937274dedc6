//! A test fixture: misbehaves on purpose, as its config says, to prove the host contains it.
//!
//! ```yaml
//! config: { behaviour: loop, when_payload: boom, stamp: v2 }
//! ```
//! `behaviour` is one of `loop` (spins forever), `oom` (grows memory without end), `trap` (panics),
//! `error` (returns an error), `sleep` (sleeps for an hour: waits without computing), `flood`
//! (returns 64 outputs whose payloads all point at one 1 MiB buffer), `reject`, `drop` or `none`.
//! `sleep_init: true` makes `init` sleep for an hour. It applies only to messages whose payload
//! equals `when_payload` (every message when unset); the others pass through. `stamp` sets a
//! `plugin-version` header on every forwarded message, so tests can tell configs apart.
//! `stamp_build: true` sets a `chaos-build` header (`chaos-build-2` on a message that already has
//! one, and so on) with the build's own stamp, the
//! `CHAOS_BUILD` variable at compile time (`1` when unset): scripts/build-plugins.sh builds it a
//! second time as `chaos-build2.wasm`, so tests can swap between two builds and tell which one
//! processed each message.
use barnabas_plugin_sdk::{Message, Output, Plugin, Verdict, export_plugin};

/// This build's stamp.
const BUILD: &str = match option_env!("CHAOS_BUILD") {
    Some(b) => b,
    None => "1",
};
use serde::Deserialize;

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Behaviour {
    None,
    Loop,
    Oom,
    Trap,
    Error,
    Reject,
    Drop,
    /// Writes to stdout and stderr, then forwards: printing must not disturb the call.
    Print,
    Sleep,
    Flood,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    behaviour: Behaviour,
    when_payload: Option<String>,
    stamp: Option<String>,
    #[serde(default)]
    stamp_build: bool,
    #[serde(default)]
    sleep_init: bool,
}

struct Chaos(Config);

impl Plugin for Chaos {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.sleep_init {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        Ok(Chaos(config))
    }

    fn handle(&self, msg: Message) -> Result<Verdict, String> {
        let triggered = match &self.0.when_payload {
            Some(trigger) => msg.payload == trigger.as_bytes(),
            None => true,
        };
        let behaviour = if triggered {
            self.0.behaviour
        } else {
            Behaviour::None
        };
        match behaviour {
            Behaviour::None => {}
            Behaviour::Loop => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Behaviour::Oom => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Behaviour::Trap => panic!("chaos: trap on purpose"),
            Behaviour::Error => return Err("chaos: error on purpose".into()),
            Behaviour::Reject => return Ok(Verdict::Reject("chaos: rejected on purpose".into())),
            Behaviour::Drop => return Ok(Verdict::Drop("chaos: dropped on purpose".into())),
            Behaviour::Sleep => std::thread::sleep(std::time::Duration::from_secs(3600)),
            Behaviour::Flood => return Ok(Verdict::Forward(flood(msg))),
            Behaviour::Print => {
                println!("chaos: printing on purpose");
                eprintln!("chaos: printing to stderr on purpose");
            }
        }
        let mut out = Output::keep();
        if let Some(stamp) = &self.0.stamp {
            out.set_header("plugin-version", stamp.as_bytes());
        }
        if self.0.stamp_build {
            // One header per chaos plugin the message went through: `chaos-build`, then
            // `chaos-build-2`, ... (it reads the headers an earlier one set).
            let before = msg
                .headers()
                .iter()
                .filter(|h| h.name.starts_with("chaos-build"))
                .count();
            let name = match before {
                0 => "chaos-build".to_string(),
                n => format!("chaos-build-{}", n + 1),
            };
            out.set_header(&name, BUILD.as_bytes());
        }
        Ok(Verdict::Forward(vec![out]))
    }
}

export_plugin!(Chaos);

/// 64 outputs whose payloads share one 1 MiB buffer: 1 MiB of guest memory that would cost the host
/// 64 MiB if it copied every output before checking their size.
fn flood(_msg: Message) -> Vec<Output> {
    let mut buffer = std::mem::ManuallyDrop::new(vec![7u8; 1 << 20]);
    let (ptr, len, cap) = (buffer.as_mut_ptr(), buffer.len(), buffer.capacity());
    (0..64)
        .map(|_| {
            // Aliases on purpose; the host refuses the result before the guest frees it.
            #[allow(unsafe_code)]
            let payload = unsafe { Vec::from_raw_parts(ptr, len, cap) };
            Output::keep().with_payload(payload)
        })
        .collect()
}
