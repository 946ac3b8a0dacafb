//! The list endpoint, one page at a time: a cycle applies each page as it arrives, so it
//! holds one page (about 5 MiB at 10,000 agents) whatever the size of the fleet, and
//! [`Listing::read_ahead`] fetches the next page while the cycle applies the last one.

use std::collections::HashSet;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::{AGENTS_PATH, ApiError, DefenderClient};
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

    /// Fetches the pages on a task of their own, one page ahead of the caller: applying a
    /// page and fetching the next take about as long each, so a cycle overlapping them
    /// takes half the time, for one more page held.
    pub fn read_ahead(mut self) -> ReadAhead {
        let (sender, pages) = mpsc::channel(1);
        let fetcher = tokio::spawn(async move {
            // The slot is taken before the fetch, so at most one page waits in the channel.
            while let Ok(slot) = sender.reserve().await {
                match self.next_page().await {
                    Some(page) => slot.send(Ahead::Page(page)),
                    None => {
                        slot.send(Ahead::End { pages: self.pages, complete: self.complete() });
                        break;
                    }
                }
            }
        });
        ReadAhead { pages, _fetcher: AbortOnDropHandle::new(fetcher), end: None }
    }

    async fn fetch(&mut self, url: &str) -> Result<super::envelope::Page, ApiError> {
        let refuse = |what: String| ApiError::Malformed { what, transient: false };
        if self.pages >= MAX_PAGES {
            return Err(refuse(format!("the list still links on after {MAX_PAGES} pages")));
        }
        if !self.visited.insert(url.to_owned()) {
            return Err(refuse(format!("the list links back to a page already fetched ({url})")));
        }
        self.client.check_next_link(url)?;
        super::envelope::page(self.client.get_json(super::Endpoint::List, url, self.deadline).await?)
    }
}

/// What the fetching task of a [`ReadAhead`] hands over.
enum Ahead {
    Page(Result<ListPage, ApiError>),
    End { pages: u32, complete: bool },
}

/// A [`Listing`] fetching one page ahead. Dropping it drops the page in flight (its budget
/// slot is already in the ledger).
pub struct ReadAhead {
    pages: mpsc::Receiver<Ahead>,
    _fetcher: AbortOnDropHandle<()>,
    /// Set when the fetcher reached the end: the pages fetched, and whether the list is complete.
    end: Option<(u32, bool)>,
}

impl ReadAhead {
    /// As [`Listing::next_page`].
    pub async fn next_page(&mut self) -> Option<Result<ListPage, ApiError>> {
        match self.pages.recv().await? {
            Ahead::Page(page) => Some(page),
            Ahead::End { pages, complete } => {
                self.end = Some((pages, complete));
                None
            }
        }
    }

    /// As [`Listing::pages`], once the end was reached; 0 before.
    pub fn pages(&self) -> u32 {
        self.end.map_or(0, |(pages, _)| pages)
    }

    /// As [`Listing::complete`]: false until the end was reached.
    pub fn complete(&self) -> bool {
        self.end.is_some_and(|(_, complete)| complete)
    }
}
