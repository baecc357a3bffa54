//! `cordon simulate`: API traffic with ground truth, for backtests, benchmarks and demos.
//!
//! Benign populations are modelled on what a frontier API sees: casual users with a daily
//! rhythm in their own time zone, heavy API customers running products on a few templates,
//! enterprise batch jobs, offices, campuses and mobile carriers with many people behind one
//! range, IDE coding agents, resellers fronting many genuine customers, and public benchmark
//! runs with step-by-step prompts. Every extraction behaviour the shipped pack targets runs as
//! a campaign on top, with knobs for its scale and stealth. Output is deterministic for a seed
//! (ChaCha8), in event-time order, hour by hour, so a day of traffic never sits in memory.
//!
//! The ground truth names each campaign's kind, start and end, its accounts and every
//! identifier a rule could group it by (addresses' /24s, client and payment fingerprints,
//! templates). No raw prompt text is generated: prompts are fingerprints from the start.

use crate::decode::{EventBatchBuilder, TimeCheck};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Hour length in ms.
const HOUR: i64 = 3_600_000;
/// Day length in ms.
const DAY: i64 = 24 * HOUR;

/// The model released during the simulation (a pivot campaign moves to it).
pub const NEW_MODEL: &str = "frontier-2";
/// The model everyone uses before the release.
pub const OLD_MODEL: &str = "frontier-1";

/// Every campaign kind, one per behaviour of the shipped extraction pack.
pub const CAMPAIGN_KINDS: &[&str] = &[
    "cot-harvest",
    "prompt-sweep",
    "hydra-range",
    "hydra-client",
    "campaign-template",
    "shared-payment",
    "new-account-burst",
    "narrow-focus",
    "new-model-pivot",
    "machine-timing",
    "new-account-cluster",
];

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Length of the simulated traffic.
    pub hours: u32,
    /// Seed: the same options and seed give the same bytes.
    pub seed: u64,
    /// Event time of the first hour, ms (aligned down to the hour).
    pub start_ms: i64,
    /// Benign accounts (all populations together; casual users take what the others leave).
    pub benign_accounts: u32,
    /// Campaign kinds to run (default: all of [`CAMPAIGN_KINDS`]).
    pub campaigns: Vec<String>,
    /// Multiplies every campaign's number of accounts (at least one account each).
    pub campaign_scale: f64,
    /// 0 = blatant; towards 0.9 campaigns send proportionally fewer requests per account, and
    /// half that share of their requests look like casual chat.
    pub stealth: f64,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            hours: 24,
            seed: 7,
            start_ms: 1_772_323_200_000, // 2026-03-01T00:00:00Z
            benign_accounts: 10_000,
            campaigns: CAMPAIGN_KINDS.iter().map(|k| (*k).to_owned()).collect(),
            campaign_scale: 1.0,
            stealth: 0.0,
        }
    }
}

/// The ground truth of a simulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    /// `cordon.truth.v1`.
    pub schema: String,
    /// The seed.
    pub seed: u64,
    /// First event time (RFC 3339).
    pub start: String,
    /// Hours simulated.
    pub hours: u32,
    /// Benign accounts.
    pub benign_accounts: u32,
    /// When [`NEW_MODEL`] was released (RFC 3339).
    pub model_release: String,
    /// The campaigns.
    pub campaigns: Vec<CampaignTruth>,
}

/// One campaign in the ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignTruth {
    /// Unique id, e.g. `hydra-range-1`.
    pub id: String,
    /// One of [`CAMPAIGN_KINDS`].
    pub kind: String,
    /// First request (RFC 3339).
    pub start: String,
    /// Start in epoch ms.
    pub start_ms: i64,
    /// Last request (RFC 3339).
    pub end: String,
    /// The campaign's accounts.
    pub accounts: Vec<String>,
    /// Every value a rule could group the campaign by: accounts, /24 ranges, client and
    /// payment fingerprints, templates.
    pub identifiers: Vec<String>,
}

/// One simulated request (event schema v1).
#[derive(Debug, Clone, Serialize)]
pub struct SimEvent {
    /// Event time, epoch ms.
    pub ts: i64,
    /// Account.
    pub account_id: String,
    /// Client address.
    pub ip: String,
    /// Request id.
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    org_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_id: Option<String>,
    user_agent: &'static str,
    client_fp: String,
    model: &'static str,
    endpoint: &'static str,
    status: u16,
    input_tokens: u32,
    output_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_tokens: Option<u32>,
    latency_ms: u32,
    prompt_fp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    template_fp: Option<String>,
    labels: Vec<&'static str>,
    payment_fp: String,
    country: &'static str,
    asn: u32,
    account_created: i64,
}

/// Who sends a request: the fields that stay the same across an actor's requests.
#[derive(Debug, Clone)]
struct Identity {
    account: String,
    org: Option<String>,
    ips: Vec<String>,
    client_fp: String,
    user_agent: &'static str,
    payment_fp: String,
    country: &'static str,
    asn: u32,
    created: i64,
}

/// What one request looks like.
#[derive(Debug, Clone, Copy)]
struct Shape {
    labels: &'static [&'static str],
    endpoint: &'static str,
    input: (u32, u32),
    output: (u32, u32),
    reasoning: bool,
}

const CHAT: Shape = Shape {
    labels: &["chat"],
    endpoint: "/v1/messages",
    input: (20, 900),
    output: (40, 700),
    reasoning: false,
};

const TOPICS: &[&[&str]] = &[
    &["chat"],
    &["writing"],
    &["coding"],
    &["math"],
    &["chat", "lang:de"],
    &["summarization"],
    &["cot_elicitation", "math"],
];

/// How an actor spreads its requests over time.
#[derive(Debug, Clone, Copy)]
enum Rhythm {
    /// A person: weighted towards the afternoon of their time zone (hours from UTC).
    Human { tz: i64 },
    /// Around the clock, Poisson.
    Flat,
    /// Between two hours of the simulation (an interval of activity), Poisson.
    Between { from_ms: i64, to_ms: i64 },
    /// Between two times, one request every `period_ms` with a small jitter.
    Regular {
        from_ms: i64,
        to_ms: i64,
        period_ms: i64,
        jitter_ms: i64,
    },
}

/// How prompts are fingerprinted.
#[derive(Debug, Clone)]
enum Prompts {
    /// Every prompt different; a person repeats one now and then.
    Distinct { repeat: f64 },
    /// Prompts filled into one of a few templates.
    Templated { templates: Vec<String> },
    /// Drawn from a fixed public set (benchmarks): the same prompts across runners.
    Fixed { set: u64, size: u64 },
}

/// One source of requests.
#[derive(Debug, Clone)]
struct Actor {
    who: Identity,
    /// Mean requests per hour while active.
    rate: f64,
    rhythm: Rhythm,
    prompts: Prompts,
    shapes: Vec<Shape>,
    /// Share of requests to [`NEW_MODEL`] once it is out.
    new_model_share: f64,
    /// Share of requests that look like casual chat instead (a campaign blending in).
    blend: f64,
}

/// The simulation: actors and the truth, generated hour by hour.
#[derive(Debug)]
pub struct Simulation {
    opts: SimOptions,
    actors: Vec<Actor>,
    truth: Truth,
    rng: ChaCha8Rng,
    release_ms: i64,
    requests: u64,
    prompts: u64,
}

fn hex(rng: &mut impl Rng) -> String {
    format!("{:016x}", rng.random::<u64>())
}

fn rfc3339(ms: i64) -> String {
    crate::gate::rfc3339(ms)
}

/// A /24 in a documentation-like space, distinct per `n`: `10.a.b.0/24` style ranges, spread
/// over many /16s so the ranges of different populations never meet.
fn range(kind: u8, n: u32) -> String {
    format!("{}.{}.{}", 11 + kind, (n >> 8) & 0xff, n & 0xff)
}

fn ip(range: &str, host: u32) -> String {
    format!("{range}.{}", 1 + host % 254)
}

impl Simulation {
    /// Builds the populations and campaigns of `opts`.
    pub fn new(opts: SimOptions) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let start = opts.start_ms - opts.start_ms.rem_euclid(HOUR);
        let end = start + i64::from(opts.hours) * HOUR;
        // The new model comes out a quarter into the simulation.
        let release_ms = start + i64::from(opts.hours) * HOUR / 4;
        let mut sim = Self {
            actors: Vec::new(),
            truth: Truth {
                schema: "cordon.truth.v1".into(),
                seed: opts.seed,
                start: rfc3339(start),
                hours: opts.hours,
                benign_accounts: 0,
                model_release: rfc3339(release_ms),
                campaigns: Vec::new(),
            },
            opts: SimOptions {
                start_ms: start,
                ..opts
            },
            rng: ChaCha8Rng::seed_from_u64(0),
            release_ms,
            requests: 0,
            prompts: 0,
        };
        sim.benign(&mut rng, start, end);
        sim.truth.benign_accounts = sim.actors.len() as u32;
        let kinds = sim.opts.campaigns.clone();
        for (i, kind) in kinds.iter().enumerate() {
            sim.campaign(&mut rng, kind, i, start, end);
        }
        sim.rng = ChaCha8Rng::seed_from_u64(rng.random());
        sim
    }

    /// The ground truth.
    pub fn truth(&self) -> &Truth {
        &self.truth
    }

    /// Hours to generate.
    pub fn hours(&self) -> u32 {
        self.opts.hours
    }

    fn account(&mut self, rng: &mut impl Rng, prefix: &str, created: i64) -> Identity {
        let n = self.actors.len();
        Identity {
            account: format!("acct-{prefix}-{n:06}"),
            org: None,
            ips: Vec::new(),
            client_fp: "web-chrome".into(),
            user_agent: "Mozilla/5.0",
            payment_fp: format!("pay-{}", hex(rng)),
            country: ["US", "DE", "GB", "FR", "IN", "BR", "JP", "CA"][n % 8],
            asn: 7922 + (n as u32 % 50),
            created,
        }
    }

    fn push(&mut self, actor: Actor) {
        self.actors.push(actor);
    }

    /// Benign populations sized from `benign_accounts`.
    fn benign(&mut self, rng: &mut ChaCha8Rng, start: i64, end: i64) {
        let total = self.opts.benign_accounts.max(100);
        let old = |rng: &mut ChaCha8Rng| start - rng.random_range(30..900) * DAY;
        // Heavy API customers: 0.5%, a product on one to three templates, their own cloud range.
        for c in 0..(total / 200).max(1) {
            let created = old(rng);
            let mut who = self.account(rng, "api", created);
            let r = range(1, c);
            who.ips = (0..4).map(|h| ip(&r, h)).collect();
            who.client_fp = "sdk-python".into();
            who.user_agent = "anthropic-python/1.0";
            who.org = Some(format!("org-api-{c}"));
            let templates = (0..rng.random_range(1..=3)).map(|_| hex(rng)).collect();
            self.push(Actor {
                who,
                rate: rng.random_range(80.0..600.0),
                rhythm: Rhythm::Flat,
                prompts: Prompts::Templated { templates },
                shapes: vec![Shape {
                    labels: &["summarization"],
                    endpoint: "/v1/messages",
                    input: (400, 3000),
                    output: (80, 450),
                    reasoning: false,
                }],
                new_model_share: 0.2,
                blend: 0.0,
            });
        }
        // Enterprise batch jobs: one template at high volume for two hours, a few API keys.
        for c in 0..(total / 1000).max(1) {
            let from = start + rng.random_range(0..(end - start - 3 * HOUR).max(1));
            let org = format!("org-batch-{c}");
            let r = range(2, c);
            let template = hex(rng);
            for k in 0..3 {
                let created = old(rng);
                let mut who = self.account(rng, "batch", created);
                who.org = Some(org.clone());
                who.ips = vec![ip(&r, k)];
                who.client_fp = "sdk-java".into();
                who.user_agent = "anthropic-java/2.1";
                self.push(Actor {
                    who,
                    rate: rng.random_range(800.0..1500.0),
                    rhythm: Rhythm::Between {
                        from_ms: from,
                        to_ms: from + 2 * HOUR,
                    },
                    prompts: Prompts::Templated {
                        templates: vec![template.clone()],
                    },
                    shapes: vec![Shape {
                        labels: &["classification"],
                        endpoint: "/v1/messages/batches",
                        input: (200, 1200),
                        output: (5, 120),
                        reasoning: false,
                    }],
                    new_model_share: 0.0,
                    blend: 0.0,
                });
            }
        }
        // Offices, campuses and carriers: many people behind one range each. The first campus
        // is at the start of term: its students signed up in the week before the simulation,
        // so many new accounts share its range, each sending a few requests (what
        // `extraction.new-account-cluster` must tell from a cluster of new accounts put to work).
        let mut placed = 0u32;
        let mut site = 0u32;
        while placed < total / 5 {
            let (people, fp, rate) = match site % 5 {
                0 => (rng.random_range(150..400), "web-chrome", 2.0), // campus
                1 => (rng.random_range(300..600), "mobile-ios", 0.8), // carrier NAT
                _ => (rng.random_range(30..120), "web-edge", 3.0),    // office
            };
            let r = range(3, site);
            let tz = [-8, -5, 0, 1, 5, 9][site as usize % 6];
            for p in 0..people {
                let created = if site == 0 {
                    start - rng.random_range(HOUR..6 * DAY)
                } else {
                    old(rng)
                };
                let mut who = self.account(rng, "site", created);
                who.ips = vec![ip(&r, p % 40)];
                who.client_fp = fp.into();
                self.push(Actor {
                    who,
                    rate,
                    rhythm: Rhythm::Human { tz },
                    prompts: Prompts::Distinct { repeat: 0.05 },
                    shapes: vec![CHAT],
                    new_model_share: 0.3,
                    blend: 0.0,
                });
            }
            placed += people;
            site += 1;
        }
        // IDE coding agents: long contexts, tool use, bursty working hours.
        for c in 0..(total / 100).max(1) {
            let created = old(rng);
            let mut who = self.account(rng, "agent", created);
            who.ips = vec![ip(&range(4, c / 50), c)];
            who.client_fp = "ide-agent".into();
            who.user_agent = "code-agent/0.9";
            self.push(Actor {
                who,
                rate: rng.random_range(60.0..400.0),
                rhythm: Rhythm::Human {
                    tz: [-8, -5, 1, 2][c as usize % 4],
                },
                prompts: Prompts::Distinct { repeat: 0.02 },
                shapes: vec![Shape {
                    labels: &["coding", "tool_use"],
                    endpoint: "/v1/messages",
                    input: (6_000, 60_000),
                    output: (100, 1_500),
                    reasoning: false,
                }],
                new_model_share: 0.5,
                blend: 0.0,
            });
        }
        // Resellers: many genuine customers behind the reseller's gateway.
        for c in 0..(total / 3000).max(1) {
            let r = range(5, c);
            let customers = rng.random_range(120..300);
            for k in 0..customers {
                let created = old(rng);
                let mut who = self.account(rng, "resold", created);
                who.org = Some(format!("org-reseller-{c}-{k}"));
                who.ips = vec![ip(&r, k % 8)];
                who.client_fp = format!("reseller-gw-{c}");
                who.user_agent = "reseller-gateway/3";
                who.payment_fp = format!("pay-reseller-{c}-{k}");
                let templates = (0..rng.random_range(2..6)).map(|_| hex(rng)).collect();
                self.push(Actor {
                    who,
                    rate: rng.random_range(1.0..12.0),
                    rhythm: Rhythm::Human {
                        tz: [-5, 1, 8][k as usize % 3],
                    },
                    prompts: if k % 3 == 0 {
                        Prompts::Distinct { repeat: 0.05 }
                    } else {
                        Prompts::Templated { templates }
                    },
                    shapes: vec![CHAT],
                    new_model_share: 0.3,
                    blend: 0.0,
                });
            }
        }
        // Public benchmark runs: step-by-step prompts from a fixed set, short answers, one or
        // two hours at a time.
        for c in 0..(total / 1000).max(1) {
            let created = old(rng);
            let mut who = self.account(rng, "bench", created);
            who.ips = vec![ip(&range(6, c), 1)];
            who.client_fp = "sdk-python".into();
            who.user_agent = "lm-eval-harness/0.4";
            let from = start + rng.random_range(0..(end - start - 2 * HOUR).max(1));
            self.push(Actor {
                who,
                rate: rng.random_range(300.0..900.0),
                rhythm: Rhythm::Between {
                    from_ms: from,
                    to_ms: from + rng.random_range(1..=2) * HOUR,
                },
                prompts: Prompts::Fixed {
                    set: u64::from(c % 3),
                    size: 14_000,
                },
                shapes: vec![Shape {
                    labels: &["cot_elicitation", "math"],
                    endpoint: "/v1/messages",
                    input: (150, 900),
                    output: (20, 350),
                    reasoning: false,
                }],
                new_model_share: 0.0,
                blend: 0.0,
            });
        }
        // Casual users: the rest, each a few requests a day in their own rhythm.
        let casual = total.saturating_sub(self.actors.len() as u32);
        let rate = rand_distr_lognormal(rng, casual);
        for (u, rate) in rate.into_iter().enumerate() {
            // A few sign up during the simulation.
            let created = if u % 50 == 0 {
                start + rng.random_range(0..(end - start))
            } else {
                old(rng)
            };
            let mut who = self.account(rng, "user", created);
            let r = range(7, rng.random_range(0..20_000));
            who.ips = vec![ip(&r, rng.random())];
            who.client_fp =
                ["web-chrome", "web-safari", "mobile-ios", "mobile-android"][u % 4].into();
            let topic = TOPICS[u % TOPICS.len()];
            self.push(Actor {
                who,
                rate,
                rhythm: Rhythm::Human {
                    tz: [-8, -5, 0, 1, 3, 5, 8, 9][u % 8],
                },
                prompts: Prompts::Distinct { repeat: 0.1 },
                shapes: vec![
                    CHAT,
                    Shape {
                        labels: topic,
                        ..CHAT
                    },
                ],
                new_model_share: 0.4,
                blend: 0.0,
            });
        }
    }

    /// Adds campaign `kind` (number `i`) to the actors and the truth.
    fn campaign(&mut self, rng: &mut ChaCha8Rng, kind: &str, i: usize, start: i64, end: i64) {
        let scale = self.opts.campaign_scale.max(0.0);
        let quiet = 1.0 - self.opts.stealth.clamp(0.0, 0.9);
        // Stealthy campaigns also blend in: part of their requests look like casual chat.
        let blend = self.opts.stealth.clamp(0.0, 0.9) / 2.0;
        let accounts = |n: u32| ((f64::from(n) * scale).round() as u32).max(1);
        let span = end - start;
        // Campaigns start in the first half (after the model release for the pivot) and run
        // for a few hours.
        // The pivot campaign harvests the old model for three hours before the release.
        let from = match kind {
            "new-model-pivot" => (self.release_ms - 3 * HOUR).max(start),
            _ => start + HOUR + rng.random_range(0..(span / 2).max(1)),
        };
        let hours = |h: i64| (from + h * HOUR).min(end);
        let heavy = Shape {
            labels: &["chat"],
            endpoint: "/v1/messages",
            input: (60, 600),
            output: (700, 3_000),
            reasoning: false,
        };
        let proxy = |rng: &mut ChaCha8Rng| ip(&range(8, rng.random_range(0..60_000)), rng.random());
        let id = format!("{kind}-{}", i + 1);
        let first = self.actors.len();
        let mut base = Actor {
            who: self.account(rng, "x", start - 400 * DAY),
            rate: 0.0,
            rhythm: Rhythm::Between {
                from_ms: from,
                to_ms: hours(4),
            },
            prompts: Prompts::Distinct { repeat: 0.0 },
            shapes: vec![heavy],
            new_model_share: 0.0,
            blend: 0.0,
        };
        base.who.client_fp = "sdk-python".into();
        base.who.user_agent = "python-requests/2.31";
        let add = |sim: &mut Self, mut actor: Actor, rng: &mut ChaCha8Rng| {
            actor.who.account = format!("acct-{id}-{:03}", sim.actors.len() - first);
            actor.who.payment_fp = if actor.who.payment_fp.starts_with("pay-shared") {
                actor.who.payment_fp
            } else {
                format!("pay-{}", hex(rng))
            };
            if actor.who.ips.is_empty() {
                actor.who.ips = vec![proxy(rng)];
            }
            actor.rate *= quiet;
            actor.blend = blend;
            sim.push(actor);
        };
        match kind {
            "cot-harvest" => {
                for _ in 0..accounts(1) {
                    let mut a = base.clone();
                    a.rate = rng.random_range(450.0..700.0);
                    a.shapes = vec![Shape {
                        labels: &["cot_elicitation"],
                        reasoning: true,
                        ..heavy
                    }];
                    add(self, a, rng);
                }
            }
            "prompt-sweep" => {
                for _ in 0..accounts(1) {
                    let mut a = base.clone();
                    a.rate = rng.random_range(900.0..1400.0);
                    a.shapes = TOPICS
                        .iter()
                        .map(|t| Shape { labels: t, ..heavy })
                        .filter(|s| !s.labels.contains(&"cot_elicitation"))
                        .collect();
                    add(self, a, rng);
                }
            }
            "hydra-range" => {
                let r = range(9, i as u32);
                let templates: Vec<String> = (0..2).map(|_| hex(rng)).collect();
                for k in 0..accounts(40) {
                    let mut a = base.clone();
                    a.who.ips = vec![ip(&r, k)];
                    a.rate = rng.random_range(12.0..25.0);
                    a.rhythm = Rhythm::Between {
                        from_ms: from,
                        to_ms: hours(5),
                    };
                    a.prompts = Prompts::Templated {
                        templates: templates.clone(),
                    };
                    add(self, a, rng);
                }
            }
            "hydra-client" => {
                let fp = format!("cf-{}", hex(rng));
                let templates: Vec<String> = (0..2).map(|_| hex(rng)).collect();
                for _ in 0..accounts(60) {
                    let mut a = base.clone();
                    a.who.client_fp = fp.clone();
                    a.who.user_agent = "Mozilla/5.0";
                    a.rate = rng.random_range(8.0..16.0);
                    a.prompts = Prompts::Templated {
                        templates: templates.clone(),
                    };
                    add(self, a, rng);
                }
            }
            "campaign-template" => {
                let template = vec![hex(rng)];
                for _ in 0..accounts(50) {
                    let mut a = base.clone();
                    a.who.client_fp = "web-chrome".into();
                    a.rate = rng.random_range(10.0..18.0);
                    a.prompts = Prompts::Templated {
                        templates: template.clone(),
                    };
                    add(self, a, rng);
                }
            }
            "shared-payment" => {
                let pay = format!("pay-shared-{}", hex(rng));
                for _ in 0..accounts(25) {
                    let mut a = base.clone();
                    a.who.payment_fp = pay.clone();
                    a.rate = rng.random_range(20.0..40.0);
                    add(self, a, rng);
                }
            }
            "new-account-burst" => {
                for _ in 0..accounts(5) {
                    let mut a = base.clone();
                    a.who.created = from - rng.random_range(0..HOUR);
                    a.rate = rng.random_range(400.0..600.0);
                    a.rhythm = Rhythm::Between {
                        from_ms: from,
                        to_ms: hours(3),
                    };
                    add(self, a, rng);
                }
            }
            "narrow-focus" => {
                for _ in 0..accounts(1) {
                    let mut a = base.clone();
                    a.rate = rng.random_range(500.0..700.0);
                    a.shapes = vec![Shape {
                        labels: &["coding", "tool_use"],
                        endpoint: "/v1/messages",
                        input: (80, 700),
                        output: (600, 2_500),
                        reasoning: false,
                    }];
                    add(self, a, rng);
                }
            }
            "new-model-pivot" => {
                // Moves nearly all of its traffic to the new model as soon as it is out.
                for _ in 0..accounts(3) {
                    let mut a = base.clone();
                    a.rate = rng.random_range(250.0..400.0);
                    a.new_model_share = 0.9;
                    a.rhythm = Rhythm::Between {
                        from_ms: from,
                        to_ms: hours(7),
                    };
                    add(self, a, rng);
                }
            }
            "machine-timing" => {
                for _ in 0..accounts(1) {
                    let mut a = base.clone();
                    let period = 10_000;
                    a.rate = 3_600_000.0 / period as f64;
                    a.rhythm = Rhythm::Regular {
                        from_ms: from,
                        to_ms: hours(4),
                        period_ms: period,
                        jitter_ms: 300,
                    };
                    add(self, a, rng);
                }
            }
            "new-account-cluster" => {
                // Accounts registered in the days before, put to work together behind one /24,
                // each busy but far below a single-account rule, each with its own prompts
                // (fewer accounts and no shared template: not a hydra-range).
                let r = range(10, i as u32);
                for k in 0..accounts(15) {
                    let mut a = base.clone();
                    a.who.created = from - rng.random_range(HOUR..5 * DAY);
                    a.who.ips = vec![ip(&r, k)];
                    a.rate = rng.random_range(12.0..25.0);
                    a.rhythm = Rhythm::Between {
                        from_ms: from,
                        to_ms: hours(4),
                    };
                    add(self, a, rng);
                }
            }
            _ => return,
        }
        let members = &self.actors[first..];
        let mut identifiers = BTreeSet::new();
        for a in members {
            identifiers.insert(a.who.account.clone());
            identifiers.insert(a.who.payment_fp.clone());
            for ip in &a.who.ips {
                if let Ok(addr) = ip.parse() {
                    identifiers.insert(cordon_rules::udf::ip_prefix(addr, 24, 48));
                }
            }
            if a.who.client_fp.starts_with("cf-") {
                identifiers.insert(a.who.client_fp.clone());
            }
            if let Prompts::Templated { templates } = &a.prompts {
                identifiers.extend(templates.iter().cloned());
            }
        }
        let last = members
            .iter()
            .map(|a| match a.rhythm {
                Rhythm::Between { to_ms, .. } | Rhythm::Regular { to_ms, .. } => to_ms,
                _ => end,
            })
            .max()
            .unwrap_or(end);
        // The pivot's behaviour starts with the release; before it the accounts harvest the
        // old model like any sweep.
        let from = if kind == "new-model-pivot" {
            from.max(self.release_ms)
        } else {
            from
        };
        self.truth.campaigns.push(CampaignTruth {
            id: format!("{kind}-{}", i + 1),
            kind: kind.to_owned(),
            start: rfc3339(from),
            start_ms: from,
            end: rfc3339(last),
            accounts: members.iter().map(|a| a.who.account.clone()).collect(),
            identifiers: identifiers.into_iter().collect(),
        });
    }

    /// The events of hour `h` (0-based), in event-time order.
    pub fn hour(&mut self, h: u32) -> Vec<SimEvent> {
        let h0 = self.opts.start_ms + i64::from(h) * HOUR;
        let mut out = Vec::new();
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        for a in 0..self.actors.len() {
            let times = arrivals(&mut rng, &self.actors[a], h0);
            for ts in times {
                let e = self.event(&mut rng, a, ts);
                out.push(e);
            }
        }
        out.sort_by_key(|e| e.ts);
        out
    }

    fn event(&mut self, rng: &mut ChaCha8Rng, a: usize, ts: i64) -> SimEvent {
        self.requests += 1;
        let actor = &self.actors[a];
        let shape = if actor.blend > 0.0 && rng.random_bool(actor.blend) {
            CHAT
        } else {
            actor.shapes[rng.random_range(0..actor.shapes.len())]
        };
        let prompt_fp = match &actor.prompts {
            Prompts::Distinct { repeat } if rng.random_bool(*repeat) => {
                format!("{:016x}", (a as u64) << 20 | rng.random_range(0..8))
            }
            Prompts::Fixed { set, size } => {
                format!(
                    "{:016x}",
                    0xbe00_0000_0000 | set << 32 | rng.random_range(0..*size)
                )
            }
            _ => {
                self.prompts += 1;
                format!("{:016x}", self.prompts ^ 0x5eed_0000_0000_0000)
            }
        };
        let template_fp = match &actor.prompts {
            Prompts::Templated { templates } => {
                Some(templates[rng.random_range(0..templates.len())].clone())
            }
            _ => None,
        };
        let output = rng.random_range(shape.output.0..=shape.output.1);
        let model = if ts >= self.release_ms && rng.random_bool(actor.new_model_share) {
            NEW_MODEL
        } else {
            OLD_MODEL
        };
        let who = &actor.who;
        SimEvent {
            ts,
            account_id: who.account.clone(),
            ip: who.ips[rng.random_range(0..who.ips.len())].clone(),
            request_id: format!("req-{:012x}", self.requests),
            org_id: who.org.clone(),
            api_key_id: Some(format!("key-{}", who.account)),
            user_agent: who.user_agent,
            client_fp: who.client_fp.clone(),
            model,
            endpoint: shape.endpoint,
            status: if rng.random_bool(0.01) { 429 } else { 200 },
            input_tokens: rng.random_range(shape.input.0..=shape.input.1),
            output_tokens: output,
            reasoning_tokens: shape.reasoning.then(|| output * 2),
            latency_ms: 200 + output * 12 + rng.random_range(0..400),
            prompt_fp,
            template_fp,
            labels: shape.labels.to_vec(),
            payment_fp: who.payment_fp.clone(),
            country: who.country,
            asn: who.asn,
            account_created: who.created,
        }
    }
}

/// Casual users' rates (requests per active hour): log-normal, median about 1 a day.
fn rand_distr_lognormal(rng: &mut ChaCha8Rng, n: u32) -> Vec<f64> {
    (0..n)
        .map(|_| {
            // Box-Muller from two uniforms: mean 0, sd 1.
            let (u1, u2): (f64, f64) = (rng.random(), rng.random());
            let z = (-2.0 * u1.max(1e-12).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (0.12 * (1.1 * z).exp()).min(12.0)
        })
        .collect()
}

/// Request times of `actor` within the hour starting at `h0`.
fn arrivals(rng: &mut ChaCha8Rng, actor: &Actor, h0: i64) -> Vec<i64> {
    let h1 = h0 + HOUR;
    let (from, to, rate) = match actor.rhythm {
        Rhythm::Flat => (h0, h1, actor.rate),
        Rhythm::Human { tz } => {
            let local = ((h0 / HOUR + tz).rem_euclid(24)) as f64;
            // Awake 8-24 local, peaking mid-afternoon.
            let w = if local < 8.0 {
                0.05
            } else {
                0.4 + (std::f64::consts::PI * (local - 8.0) / 16.0).sin()
            };
            (h0, h1, actor.rate * w)
        }
        Rhythm::Between { from_ms, to_ms } => (h0.max(from_ms), h1.min(to_ms), actor.rate),
        Rhythm::Regular {
            from_ms,
            to_ms,
            period_ms,
            jitter_ms,
        } => {
            let (from, to) = (h0.max(from_ms), h1.min(to_ms));
            let mut t = from_ms + (from - from_ms + period_ms - 1) / period_ms * period_ms;
            let mut out = Vec::new();
            while t < to {
                out.push((t + rng.random_range(-jitter_ms..=jitter_ms)).clamp(from, to - 1));
                t += period_ms;
            }
            return out;
        }
    };
    if to <= from || rate <= 0.0 {
        return Vec::new();
    }
    // Poisson arrivals: exponential gaps.
    let per_ms = rate / HOUR as f64;
    let mut out = Vec::new();
    let mut t = from as f64;
    loop {
        let u: f64 = rng.random::<f64>().max(1e-12);
        t += -u.ln() / per_ms;
        if t >= to as f64 {
            break;
        }
        out.push(t as i64);
    }
    out
}

/// Where simulated events go.
pub trait EventSink {
    /// Takes one hour of events, in event-time order.
    fn write(&mut self, events: &[SimEvent]) -> anyhow::Result<()>;
    /// Flushes and closes.
    fn finish(&mut self) -> anyhow::Result<()>;
}

/// JSON lines.
pub struct JsonlSink<W: std::io::Write>(pub W);

impl<W: std::io::Write> EventSink for JsonlSink<W> {
    fn write(&mut self, events: &[SimEvent]) -> anyhow::Result<()> {
        for e in events {
            serde_json::to_writer(&mut self.0, e)?;
            self.0.write_all(b"\n")?;
        }
        Ok(())
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        self.0.flush()?;
        Ok(())
    }
}

/// Parquet with event schema v1's Arrow types (the decoder builds the batches).
pub struct ParquetSink {
    writer: Option<datafusion::parquet::arrow::ArrowWriter<std::fs::File>>,
    builder: EventBatchBuilder,
}

impl ParquetSink {
    /// Creates `path`.
    pub fn create(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)?;
        let writer = datafusion::parquet::arrow::ArrowWriter::try_new(
            file,
            cordon_rules::schema::event_schema(),
            None,
        )?;
        Ok(Self {
            writer: Some(writer),
            builder: EventBatchBuilder::new(1 << 20),
        })
    }
}

impl EventSink for ParquetSink {
    fn write(&mut self, events: &[SimEvent]) -> anyhow::Result<()> {
        for chunk in events.chunks(8192) {
            let mut time = TimeCheck::accept_all();
            for e in chunk {
                let bytes = serde_json::to_vec(e)?;
                self.builder
                    .push(&bytes, &mut time)
                    .map_err(|r| anyhow::anyhow!("simulated event refused: {}", r.detail))?;
            }
            let batch = self.builder.finish().batch;
            if let Some(w) = self.writer.as_mut() {
                w.write(&batch)?;
            }
        }
        Ok(())
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(w) = self.writer.take() {
            w.close()?;
        }
        Ok(())
    }
}

/// Runs the whole simulation into `sink`; returns the number of events.
pub fn run(sim: &mut Simulation, sink: &mut dyn EventSink) -> anyhow::Result<u64> {
    let mut n = 0u64;
    for h in 0..sim.hours() {
        let events = sim.hour(h);
        n += events.len() as u64;
        sink.write(&events)?;
    }
    sink.finish()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SimOptions {
        SimOptions {
            hours: 3,
            benign_accounts: 500,
            ..SimOptions::default()
        }
    }

    fn lines(opts: SimOptions) -> (Vec<u8>, Truth) {
        let mut sim = Simulation::new(opts);
        let mut sink = JsonlSink(Vec::new());
        run(&mut sim, &mut sink).expect("simulate");
        (sink.0, sim.truth().clone())
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (a, ta) = lines(small());
        let (b, tb) = lines(small());
        assert_eq!(a, b);
        assert_eq!(ta, tb);
        let (c, _) = lines(SimOptions { seed: 8, ..small() });
        assert_ne!(a, c);
    }

    #[test]
    fn events_are_valid_and_in_time_order() {
        let (bytes, truth) = lines(small());
        let mut builder = EventBatchBuilder::new(1 << 20);
        // No lateness: an event before the last one is refused.
        let mut time = TimeCheck {
            allowed_lateness_ms: 0,
            ..TimeCheck::accept_all()
        };
        let mut n = 0;
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            builder
                .push(line, &mut time)
                .expect("a valid, in-order event");
            n += 1;
        }
        assert!(n > 1000, "{n} events");
        assert_eq!(
            truth.benign_accounts as usize,
            truth.benign_accounts as usize
        );
        assert!(!String::from_utf8_lossy(&bytes).contains("\"prompt\""));
    }

    #[test]
    fn every_campaign_kind_is_in_the_truth_with_its_identifiers() {
        let sim = Simulation::new(SimOptions {
            hours: 24,
            benign_accounts: 200,
            ..SimOptions::default()
        });
        let truth = sim.truth();
        let kinds: Vec<&str> = truth.campaigns.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(kinds, CAMPAIGN_KINDS);
        for c in &truth.campaigns {
            assert!(!c.accounts.is_empty(), "{c:?}");
            for a in &c.accounts {
                assert!(c.identifiers.contains(a), "{c:?}");
            }
        }
        let hydra = &truth.campaigns[2];
        assert!(
            hydra.identifiers.iter().any(|i| i.ends_with(".0/24")),
            "{hydra:?}"
        );
    }

    #[test]
    fn stealth_makes_campaigns_quieter_and_blended() {
        let campaign_events = |stealth: f64| {
            let opts = SimOptions {
                hours: 24,
                benign_accounts: 100,
                campaigns: vec!["cot-harvest".into()],
                stealth,
                ..SimOptions::default()
            };
            let mut sim = Simulation::new(opts);
            let accounts = sim.truth().campaigns[0].accounts.clone();
            let (mut n, mut cot) = (0usize, 0usize);
            for h in 0..sim.hours() {
                for e in sim.hour(h) {
                    if accounts.contains(&e.account_id) {
                        n += 1;
                        cot += usize::from(e.labels.contains(&"cot_elicitation"));
                    }
                }
            }
            (n, cot as f64 / n as f64)
        };
        let (loud, loud_share) = campaign_events(0.0);
        let (quiet, quiet_share) = campaign_events(0.6);
        assert!(quiet * 2 < loud, "{quiet} vs {loud}");
        assert!(loud_share > 0.99, "{loud_share}");
        assert!((0.6..0.8).contains(&quiet_share), "{quiet_share}");
    }

    #[test]
    fn machine_timing_is_regular_and_humans_are_not() {
        let arr = |rhythm| {
            let actor = Actor {
                who: Identity {
                    account: "a".into(),
                    org: None,
                    ips: vec!["10.0.0.1".into()],
                    client_fp: String::new(),
                    user_agent: "",
                    payment_fp: String::new(),
                    country: "US",
                    asn: 1,
                    created: 0,
                },
                rate: 360.0,
                rhythm,
                prompts: Prompts::Distinct { repeat: 0.0 },
                shapes: vec![CHAT],
                new_model_share: 0.0,
                blend: 0.0,
            };
            arrivals(&mut ChaCha8Rng::seed_from_u64(1), &actor, 0)
        };
        let cv = |t: &[i64]| {
            let gaps: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
            let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
            var.sqrt() / mean
        };
        let regular = arr(Rhythm::Regular {
            from_ms: 0,
            to_ms: HOUR,
            period_ms: 10_000,
            jitter_ms: 300,
        });
        assert_eq!(regular.len(), 360);
        assert!(cv(&regular) < 0.1);
        let poisson = arr(Rhythm::Flat);
        assert!(cv(&poisson) > 0.7, "{}", cv(&poisson));
    }
}
