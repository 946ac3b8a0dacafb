//! The list endpoint, one page at a time: a cycle applies each page as it arrives, so it
//! holds one page (about 5 MiB at 10,000 agents) whatever the size of the fleet. While it
//! applies one, the next page's request may be on its way ([`Listing::send_ahead`]).

use std::collections::HashSet;

use serde_json::Value;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::{AGENTS_PATH, ApiError, DefenderClient, Endpoint, Sent};
use crate::agent::{AgentRecord, RecordError};

/// Most pages one listing follows. The hourly budget is 1,500 calls, so a listing that needs
/// more than this is not going to finish anyway; a server that keeps linking on is broken.
const MAX_PAGES: u32 = 1000;

/// One page's agents.
#[derive(Debug, Default)]
pub struct ListPage {
    /// Usable agents, in the order listed.
    pub records: Vec<AgentRecord>,
    /// Records that could not be parsed. Most name their agent (`MissingField`, `BadField`):
    /// such an agent was listed, so it must not be marked missing for want of a usable record.
    pub bad_records: Vec<RecordError>,
}

/// A listing in progress: follows `@odata.nextLink` until there is none, refusing links that
/// loop, run past [`MAX_PAGES`] or leave the API.
#[derive(Debug)]
pub struct Listing {
    client: DefenderClient,
    deadline: Option<Instant>,
    next: Option<String>,
    visited: HashSet<String>,
    pages: u32,
    failed: bool,
    /// The first try of the next page's request, sent ahead (see [`Listing::send_ahead`]).
    ahead: Option<AbortOnDropHandle<Result<Sent, ApiError>>>,
}

impl DefenderClient {
    /// Starts a listing; no request is made until [`Listing::next_page`].
    pub fn list(&self, deadline: Option<Instant>) -> Listing {
        Listing {
            client: self.clone(),
            deadline,
            next: Some(format!("{}{AGENTS_PATH}", self.inner.api_base_url)),
            visited: HashSet::new(),
            pages: 0,
            failed: false,
            ahead: None,
        }
    }
}

impl Listing {
    /// The next page, or `None` once the last page was returned or a page failed (the error
    /// is returned once, then the listing is over and incomplete).
    #[tracing::instrument(skip_all, fields(page = self.pages + 1))]
    pub async fn next_page(&mut self) -> Option<Result<ListPage, ApiError>> {
        let url = self.next.take()?;
        let page = match self.fetch(&url).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(error = %error, pages = self.pages, target = error.target(), "listing stopped early");
                self.failed = true;
                return Some(Err(error));
            }
        };
        self.pages += 1;
        self.next = page.next_link;
        let mut listed = ListPage::default();
        for raw in page.items {
            let shown_id = raw.get("id").and_then(Value::as_str).map(str::to_owned);
            match AgentRecord::from_json(raw) {
                Ok(record) => listed.records.push(record),
                Err(error) => {
                    tracing::warn!(agent_id = shown_id, error = %error, "unusable agent record skipped");
                    listed.bad_records.push(error);
                }
            }
        }
        Some(Ok(listed))
    }

    /// Pages fetched successfully so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// True once the last page was reached: only then may absent agents be marked missing.
    pub fn complete(&self) -> bool {
        self.next.is_none() && !self.failed && self.pages > 0
    }

    /// Sends the next page's request now, on its own task, and reads only the head of the
    /// answer: the API prepares the page while the caller applies the last one, and the body
    /// waits in the connection (the kernel's socket buffers), not in this process's memory,
    /// until [`Listing::next_page`] reads it. Reading the next page ahead instead would hold
    /// two pages. Does nothing when there is no next page, or one [`Listing::next_page`]
    /// will refuse; dropping the listing aborts the request.
    pub fn send_ahead(&mut self) {
        let Some(url) = self.next.clone() else { return };
        if self.ahead.is_some() || self.refusal(&url).is_some() {
            return;
        }
        let (client, deadline) = (self.client.clone(), self.deadline);
        let sent = tokio::spawn(async move { client.start(Endpoint::List, &url, deadline).await });
        self.ahead = Some(AbortOnDropHandle::new(sent));
    }

    async fn fetch(&mut self, url: &str) -> Result<super::envelope::Page, ApiError> {
        if let Some(refused) = self.refusal(url) {
            return Err(refused);
        }
        self.visited.insert(url.to_owned());
        let first = match self.ahead.take() {
            Some(sent) => Some(sent.await.expect("sending a request does not panic")),
            None => None,
        };
        super::envelope::page(self.client.get_json_from(Endpoint::List, url, self.deadline, first).await?)
    }

    /// Why `url` is not followed: past [`MAX_PAGES`], a page already fetched, or off the API.
    fn refusal(&self, url: &str) -> Option<ApiError> {
        let refuse = |what: String| ApiError::Malformed { what, transient: false };
        if self.pages >= MAX_PAGES {
            return Some(refuse(format!("the list still links on after {MAX_PAGES} pages")));
        }
        if self.visited.contains(url) {
            return Some(refuse(format!("the list links back to a page already fetched ({url})")));
        }
        self.client.check_next_link(url).err()
    }
}
