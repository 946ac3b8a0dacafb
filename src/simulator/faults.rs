//! Injected failures: the upstream misbehaviours a client must survive (5xx, garbage, resets).

use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Shares of API requests that fail on purpose. The shares are of all requests, drawn from one
/// roll, so `error_rate = 0.1` means one request in ten gets a 5xx; if they add up to more than
/// 1, the later ones (reset, then error, then malformed) get what is left.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Answered 500 or 503 with the documented error body.
    pub error_rate: f64,
    /// Answered 200 with JSON cut off halfway.
    pub malformed_rate: f64,
    /// Connection closed without any response.
    pub reset_rate: f64,
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    None,
    Reset,
    ServerError(StatusCode),
    Malformed,
}

/// Draws faults from a seeded source, so a failing client test fails the same way again.
#[derive(Debug)]
pub(super) struct FaultInjector {
    pub faults: Faults,
    rng: StdRng,
}

impl FaultInjector {
    pub fn new(faults: Faults, seed: u64) -> Self {
        Self { faults, rng: StdRng::seed_from_u64(seed) }
    }

    pub fn draw(&mut self) -> Fault {
        let Faults { error_rate, malformed_rate, reset_rate } = self.faults;
        let roll: f64 = self.rng.random();
        if roll < reset_rate {
            Fault::Reset
        } else if roll < reset_rate + error_rate {
            let status = if self.rng.random() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Fault::ServerError(status)
        } else if roll < reset_rate + error_rate + malformed_rate {
            Fault::Malformed
        } else {
            Fault::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_roughly_kept() {
        let mut injector =
            FaultInjector::new(Faults { error_rate: 0.2, malformed_rate: 0.1, reset_rate: 0.1 }, 7);
        let draws: Vec<Fault> = (0..10_000).map(|_| injector.draw()).collect();
        let share = |f: fn(&Fault) -> bool| draws.iter().filter(|d| f(d)).count() as f64 / 10_000.0;
        assert!((share(|d| matches!(d, Fault::ServerError(_))) - 0.2).abs() < 0.02);
        assert!((share(|d| *d == Fault::Malformed) - 0.1).abs() < 0.02);
        assert!((share(|d| *d == Fault::Reset) - 0.1).abs() < 0.02);
    }

    #[test]
    fn no_faults_by_default() {
        let mut injector = FaultInjector::new(Faults::default(), 7);
        assert!((0..1000).all(|_| injector.draw() == Fault::None));
    }
}
