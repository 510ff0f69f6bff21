//! What a migration reports: a step while it runs ([`Step`]) and its summary at the end
//! ([`Summary`]). Both travel between nodes in their wire form (a relayed migration) and are
//! turned into JSON only for the local control socket ([`Step::to_json`],
//! [`Summary::to_json`]).

use pop_wire::{Decode, Decoder, Encode, Encoder, WireError};
use serde_json::{Value, json};

use crate::Mode;

/// Most phases a summary lists (30 rounds and the rest).
const MAX_PHASES: usize = 64;
/// Most bytes of a phase's name.
const MAX_PHASE_NAME: usize = 64;

/// One step of a migration in progress.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A pre-copy round ended.
    Round {
        /// Its number, from 1.
        round: u32,
        /// Pages sent in it.
        pages: u64,
        /// Bytes sent in it.
        bytes: u64,
        /// The rate it measured.
        mb_per_sec: f64,
        /// Pages dirty after it.
        remaining_pages: u64,
        /// What stopping now would cost, at that rate.
        estimated_downtime_ms: f64,
    },
    /// A post-copy VM runs at its destination now.
    Switched {
        /// The destination.
        to: u32,
        /// Bytes sent up to the switch-over.
        bytes: u64,
        /// How long the VM was stopped.
        downtime_ms: f64,
    },
    /// A post-copy source pushed this far.
    Push {
        /// Pages pushed so far.
        pushed_pages: u64,
        /// Pages to push in all.
        total_pages: u64,
        /// Bytes pushed so far.
        bytes: u64,
        /// The push's rate.
        mb_per_sec: f64,
    },
}

/// How a migration went.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The node the VM left.
    pub from: u32,
    /// The node it runs on now.
    pub to: u32,
    /// How it moved.
    pub mode: Mode,
    /// Copy rounds (1 for post-copy).
    pub rounds: u32,
    /// From the request to the end (pre-copy: `GO` answered; post-copy: the last page in).
    pub total_ms: f64,
    /// How long the VM was stopped.
    pub downtime_ms: f64,
    /// Bytes sent, records and states.
    pub bytes: u64,
    /// Pages sent while the VM was stopped (post-copy: pages pushed).
    pub last_pages: u64,
    /// vCPUs running guest threads (pre-copy).
    pub vcpus: Option<u32>,
    /// Pages the destination asked for again (pre-copy).
    pub resent_pages: Option<u64>,
    /// The destination reused memory a VM had left there.
    pub reused_memory: bool,
    /// The destination had the image already.
    pub had_image: bool,
    /// Where the time went: each step's milliseconds, in order.
    pub phases: Vec<(String, f64)>,
}

/// Milliseconds rounded to the microsecond, for JSON.
fn ms(v: f64) -> Value {
    json!((v * 1e3).round() / 1e3)
}

impl Step {
    /// As the control socket shows it.
    pub fn to_json(&self) -> Value {
        match self {
            Step::Round {
                round,
                pages,
                bytes,
                mb_per_sec,
                remaining_pages,
                estimated_downtime_ms,
            } => json!({
                "round": round,
                "pages": pages,
                "bytes": bytes,
                "mb_per_sec": mb_per_sec,
                "remaining_pages": remaining_pages,
                "estimated_downtime_ms": estimated_downtime_ms,
            }),
            Step::Switched {
                to,
                bytes,
                downtime_ms,
            } => json!({
                "phase": "switched",
                "to": to,
                "bytes": bytes,
                "downtime_ms": downtime_ms,
            }),
            Step::Push {
                pushed_pages,
                total_pages,
                bytes,
                mb_per_sec,
            } => json!({
                "phase": "push",
                "pushed_pages": pushed_pages,
                "total_pages": total_pages,
                "bytes": bytes,
                "mb_per_sec": mb_per_sec,
            }),
        }
    }
}

impl Summary {
    /// As the control socket shows it.
    pub fn to_json(&self) -> Value {
        let phases: serde_json::Map<String, Value> = self
            .phases
            .iter()
            .map(|(name, v)| (name.clone(), ms(*v)))
            .collect();
        let mut v = json!({
            "from": self.from,
            "to": self.to,
            "mode": self.mode.name(),
            "rounds": self.rounds,
            "total_ms": self.total_ms,
            "downtime_ms": self.downtime_ms,
            "bytes": self.bytes,
            "last_pages": self.last_pages,
            "reused_memory": self.reused_memory,
            "had_image": self.had_image,
            "phases": phases,
        });
        if let Some(n) = self.vcpus {
            v["vcpus"] = json!(n);
        }
        if let Some(n) = self.resent_pages {
            v["resent_pages"] = json!(n);
        }
        v
    }
}

fn put_f64(e: &mut Encoder, v: f64) {
    e.u64(v.to_bits());
}

fn get_f64(d: &mut Decoder<'_>) -> Result<f64, WireError> {
    Ok(f64::from_bits(d.u64()?))
}

impl Encode for Step {
    fn encode(&self, e: &mut Encoder) {
        match self {
            Step::Round {
                round,
                pages,
                bytes,
                mb_per_sec,
                remaining_pages,
                estimated_downtime_ms,
            } => {
                e.u8(1).u32(*round).u64(*pages).u64(*bytes);
                put_f64(e, *mb_per_sec);
                e.u64(*remaining_pages);
                put_f64(e, *estimated_downtime_ms);
            }
            Step::Switched {
                to,
                bytes,
                downtime_ms,
            } => {
                e.u8(2).u32(*to).u64(*bytes);
                put_f64(e, *downtime_ms);
            }
            Step::Push {
                pushed_pages,
                total_pages,
                bytes,
                mb_per_sec,
            } => {
                e.u8(3).u64(*pushed_pages).u64(*total_pages).u64(*bytes);
                put_f64(e, *mb_per_sec);
            }
        }
    }
}

impl Decode for Step {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(match d.u8()? {
            1 => Step::Round {
                round: d.u32()?,
                pages: d.u64()?,
                bytes: d.u64()?,
                mb_per_sec: get_f64(d)?,
                remaining_pages: d.u64()?,
                estimated_downtime_ms: get_f64(d)?,
            },
            2 => Step::Switched {
                to: d.u32()?,
                bytes: d.u64()?,
                downtime_ms: get_f64(d)?,
            },
            3 => Step::Push {
                pushed_pages: d.u64()?,
                total_pages: d.u64()?,
                bytes: d.u64()?,
                mb_per_sec: get_f64(d)?,
            },
            _ => return Err(WireError("bad migration step")),
        })
    }
}

impl Encode for Summary {
    fn encode(&self, e: &mut Encoder) {
        e.u32(self.from).u32(self.to);
        self.mode.encode(e);
        e.u32(self.rounds);
        put_f64(e, self.total_ms);
        put_f64(e, self.downtime_ms);
        e.u64(self.bytes).u64(self.last_pages);
        self.vcpus.encode(e);
        self.resent_pages.encode(e);
        self.reused_memory.encode(e);
        self.had_image.encode(e);
        e.u32(self.phases.len() as u32);
        for (name, v) in &self.phases {
            e.string(name);
            put_f64(e, *v);
        }
    }
}

impl Decode for Summary {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let from = d.u32()?;
        let to = d.u32()?;
        let mode = Mode::decode(d)?;
        let rounds = d.u32()?;
        let total_ms = get_f64(d)?;
        let downtime_ms = get_f64(d)?;
        let bytes = d.u64()?;
        let last_pages = d.u64()?;
        let vcpus = Option::decode(d)?;
        let resent_pages = Option::decode(d)?;
        let reused_memory = bool::decode(d)?;
        let had_image = bool::decode(d)?;
        let n = d.u32()? as usize;
        if n > MAX_PHASES {
            return Err(WireError("too many phases"));
        }
        let mut phases = Vec::with_capacity(n);
        for _ in 0..n {
            phases.push((d.string(MAX_PHASE_NAME)?, get_f64(d)?));
        }
        Ok(Summary {
            from,
            to,
            mode,
            rounds,
            total_ms,
            downtime_ms,
            bytes,
            last_pages,
            vcpus,
            resent_pages,
            reused_memory,
            had_image,
            phases,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_read_as_before_in_json() {
        let summary = Summary {
            from: 0,
            to: 1,
            mode: Mode::Precopy,
            rounds: 2,
            total_ms: 13.5,
            downtime_ms: 0.8,
            bytes: 1000,
            last_pages: 3,
            vcpus: Some(2),
            resent_pages: Some(0),
            reused_memory: true,
            had_image: false,
            phases: vec![("begin".into(), 0.25), ("round 1".into(), 10.0)],
        };
        let bytes = pop_wire::to_bytes(&summary);
        assert_eq!(pop_wire::from_bytes::<Summary>(&bytes).unwrap(), summary);
        for cut in 0..bytes.len() {
            assert!(pop_wire::from_bytes::<Summary>(&bytes[..cut]).is_err());
        }
        let j = summary.to_json();
        assert_eq!(j["mode"], "precopy");
        assert_eq!(j["phases"]["round 1"], 10.0);
        assert_eq!(j["vcpus"], 2);
        let step = Step::Push {
            pushed_pages: 1,
            total_pages: 2,
            bytes: 3,
            mb_per_sec: 4.5,
        };
        let bytes = pop_wire::to_bytes(&step);
        assert_eq!(pop_wire::from_bytes::<Step>(&bytes).unwrap(), step);
        assert_eq!(step.to_json()["phase"], "push");
        assert!(pop_wire::from_bytes::<Step>(&[9]).is_err());
    }
}
