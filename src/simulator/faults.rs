//! Injected failures: the upstream misbehaviours a client must survive (5xx, 429 storms,
//! garbage, oversized or mislabelled bodies, resets, a failing token endpoint).

use axum::http::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Shares of requests that fail on purpose. The API shares are of all admitted API requests,
/// drawn from one roll, so `error_rate = 0.1` means one request in ten gets a 5xx; if they add
/// up to more than 1, the later ones (in field order) get what is left. The token shares are
/// drawn the same way, from a roll of their own, for token requests only.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Answered 500 or 503 with the documented error body.
    pub error_rate: f64,
    /// Answered 200 with JSON cut off halfway.
    pub malformed_rate: f64,
    /// Connection closed without any response.
    pub reset_rate: f64,
    /// Answered 429 with `Retry-After: 1`, whatever the rate windows say: another client of
    /// the same app registration is spending the budget.
    pub throttle_rate: f64,
    /// Answered 200 with a well-formed JSON page padded far beyond any sane size, streamed
    /// without `Content-Length`, so only a client that caps while reading stops early.
    pub oversized_rate: f64,
    /// Answered 200 with an HTML page labelled `text/html`, as a proxy or captive portal does.
    pub wrong_content_type_rate: f64,
    /// Token requests answered 503 by Entra ID.
    pub token_error_rate: f64,
    /// Token requests refused 401 `invalid_client`, as for a secret that expired.
    pub token_refusal_rate: f64,
}

/// What to do to one API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    None,
    Reset,
    ServerError(StatusCode),
    Malformed,
    Throttled,
    Oversized,
    WrongContentType,
}

/// What to do to one token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenFault {
    None,
    Unavailable,
    InvalidClient,
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
        let f = self.faults;
        let shares = [
            (f.reset_rate, Fault::Reset),
            (f.error_rate, Fault::ServerError(StatusCode::INTERNAL_SERVER_ERROR)),
            (f.malformed_rate, Fault::Malformed),
            (f.throttle_rate, Fault::Throttled),
            (f.oversized_rate, Fault::Oversized),
            (f.wrong_content_type_rate, Fault::WrongContentType),
        ];
        match pick(self.rng.random(), &shares, Fault::None) {
            // The service answers both; which one is a second, independent draw.
            Fault::ServerError(_) if self.rng.random() => Fault::ServerError(StatusCode::SERVICE_UNAVAILABLE),
            fault => fault,
        }
    }

    pub fn draw_token(&mut self) -> TokenFault {
        let shares = [
            (self.faults.token_error_rate, TokenFault::Unavailable),
            (self.faults.token_refusal_rate, TokenFault::InvalidClient),
        ];
        pick(self.rng.random(), &shares, TokenFault::None)
    }
}

/// The first outcome whose cumulative share exceeds `roll`, else `otherwise`.
fn pick<T: Copy>(roll: f64, shares: &[(f64, T)], otherwise: T) -> T {
    let mut below = 0.0;
    for &(share, outcome) in shares {
        below += share;
        if roll < below {
            return outcome;
        }
    }
    otherwise
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares<T>(draws: &[T], f: impl Fn(&T) -> bool) -> f64 {
        draws.iter().filter(|d| f(d)).count() as f64 / draws.len() as f64
    }

    #[test]
    fn shares_are_roughly_kept() {
        let faults = Faults {
            error_rate: 0.2,
            malformed_rate: 0.1,
            reset_rate: 0.1,
            throttle_rate: 0.1,
            oversized_rate: 0.05,
            wrong_content_type_rate: 0.05,
            ..Faults::default()
        };
        let mut injector = FaultInjector::new(faults, 7);
        let draws: Vec<Fault> = (0..10_000).map(|_| injector.draw()).collect();
        assert!((shares(&draws, |d| matches!(d, Fault::ServerError(_))) - 0.2).abs() < 0.02);
        assert!(
            (shares(&draws, |d| *d == Fault::ServerError(StatusCode::SERVICE_UNAVAILABLE)) - 0.1).abs()
                < 0.02
        );
        assert!((shares(&draws, |d| *d == Fault::Malformed) - 0.1).abs() < 0.02);
        assert!((shares(&draws, |d| *d == Fault::Reset) - 0.1).abs() < 0.02);
        assert!((shares(&draws, |d| *d == Fault::Throttled) - 0.1).abs() < 0.02);
        assert!((shares(&draws, |d| *d == Fault::Oversized) - 0.05).abs() < 0.02);
        assert!((shares(&draws, |d| *d == Fault::WrongContentType) - 0.05).abs() < 0.02);
    }

    #[test]
    fn token_faults_have_their_own_shares() {
        let faults =
            Faults { token_error_rate: 0.3, token_refusal_rate: 0.2, error_rate: 1.0, ..Faults::default() };
        let mut injector = FaultInjector::new(faults, 7);
        let draws: Vec<TokenFault> = (0..10_000).map(|_| injector.draw_token()).collect();
        assert!((shares(&draws, |d| *d == TokenFault::Unavailable) - 0.3).abs() < 0.02);
        assert!((shares(&draws, |d| *d == TokenFault::InvalidClient) - 0.2).abs() < 0.02);
    }

    #[test]
    fn no_faults_by_default() {
        let mut injector = FaultInjector::new(Faults::default(), 7);
        assert!((0..1000).all(|_| injector.draw() == Fault::None));
        assert!((0..1000).all(|_| injector.draw_token() == TokenFault::None));
    }
}
