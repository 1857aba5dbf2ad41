//! Replica-set mode on the wire: the requests whose replies name members
//! (hello, isMaster, replSetGetStatus, replSetGetConfig) are remembered by
//! requestID, and their replies are rewritten to name mongotap's listeners
//! instead. This runs whether or not tracking is on, since a driver that
//! saw one real member address would bypass the proxy.

use super::ConnState;
use crate::topology::ReplicaSet;
use mongotap_proto::hello::{self, AddressMap, ReplyKind};
use mongotap_proto::{CommandView, DecodeError};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// How many hello-like requests a connection remembers at once. Drivers
/// have one (the monitor's awaitable hello) or a handshake pending.
const REMEMBERED: usize = 8;

/// A fixed ring of requestIDs whose replies are to be rewritten.
#[derive(Default)]
pub struct HelloIds {
    ids: [Option<(i32, ReplyKind)>; REMEMBERED],
    next: usize,
}

impl HelloIds {
    fn note(&mut self, id: i32, kind: ReplyKind) {
        self.ids[self.next] = Some((id, kind));
        self.next = (self.next + 1) % REMEMBERED;
    }

    fn is_empty(&self) -> bool {
        self.ids.iter().all(Option::is_none)
    }

    fn take(&mut self, id: i32) -> Option<ReplyKind> {
        let slot = self
            .ids
            .iter_mut()
            .find(|s| s.is_some_and(|(i, _)| i == id))?;
        slot.take().map(|(_, kind)| kind)
    }
}

/// The reply kind a command's reply is, when it names members.
fn reply_kind(view: &CommandView<'_>) -> Option<ReplyKind> {
    if view.is_hello() {
        return Some(ReplyKind::Hello);
    }
    match view.name {
        "replSetGetStatus" => Some(ReplyKind::ReplSetGetStatus),
        "replSetGetConfig" => Some(ReplyKind::ReplSetGetConfig),
        _ => None,
    }
}

/// Maps each member to its listener, and `me` to the listener this client
/// dialled.
struct ListenerMap<'a> {
    set: &'a ReplicaSet,
    me: &'a str,
}

impl AddressMap for ListenerMap<'_> {
    fn advertise(&mut self, member: &str) -> Option<String> {
        self.set.advertise(member)
    }

    fn me(&self) -> &str {
        self.me
    }
}

impl ConnState {
    /// Remembers a request whose reply will name members (replica-set
    /// mode only).
    pub(super) fn note_member_request(&self, request_id: i32, view: &CommandView<'_>) {
        if self.obs.replica_set.is_none() {
            return;
        }
        if let Some(kind) = reply_kind(view) {
            let mut hellos = self.hellos.lock().unwrap_or_else(|e| e.into_inner());
            hellos.note(request_id, kind);
            self.hellos_waiting.store(true, Relaxed);
        }
    }

    /// The reply rewritten to name mongotap's listeners, when it answers a
    /// remembered request. `more`: the reply has moreToCome, so the next
    /// reply of the stream answers this one's requestID.
    pub(super) fn rewrite_member_reply(
        &self,
        frame: &[u8],
        (request_id, response_to): (i32, i32),
        more: bool,
    ) -> Result<Option<Vec<u8>>, DecodeError> {
        // Most replies answer data commands: one load, no lock.
        if !self.hellos_waiting.load(Relaxed) {
            return Ok(None);
        }
        let (Some(set), Some(member)) = (&self.obs.replica_set, &self.id.member) else {
            return Ok(None);
        };
        let kind = {
            let mut hellos = self.hellos.lock().unwrap_or_else(|e| e.into_inner());
            let Some(kind) = hellos.take(response_to) else {
                return Ok(None);
            };
            if more {
                hellos.note(request_id, kind);
            }
            self.hellos_waiting.store(!hellos.is_empty(), Relaxed);
            kind
        };
        let mut map = ListenerMap {
            set,
            me: &member.advertise,
        };
        let limit = self.obs.max_frame_bytes;
        let rewrite = hello::rewrite_reply_with_facts(frame, kind, &mut map, limit)?;
        if let Some(facts) = &rewrite.facts {
            // What the member says of itself, on a client's connection.
            member.saw_hello(facts.state, set.epoch, Instant::now());
            if let Some(name) = &facts.set_name {
                set.note_set_name(name);
            }
        }
        Ok(rewrite.frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_taken_once_and_the_ring_stays_bounded() {
        let mut ids = HelloIds::default();
        ids.note(5, ReplyKind::Hello);
        assert_eq!(ids.take(5), Some(ReplyKind::Hello));
        assert_eq!(ids.take(5), None);
        for id in 0..(REMEMBERED as i32 + 3) {
            ids.note(id, ReplyKind::ReplSetGetStatus);
        }
        assert_eq!(ids.take(0), None, "the oldest was overwritten");
        assert_eq!(
            ids.take(REMEMBERED as i32 + 2),
            Some(ReplyKind::ReplSetGetStatus)
        );
        let kind = |body: bson::RawDocumentBuf| {
            reply_kind(&mongotap_proto::CommandView::parse(&body).expect("command"))
        };
        assert_eq!(
            kind(bson::rawdoc! { "isMaster": 1, "$db": "admin" }),
            Some(ReplyKind::Hello)
        );
        assert_eq!(
            kind(bson::rawdoc! { "replSetGetStatus": 1, "$db": "admin" }),
            Some(ReplyKind::ReplSetGetStatus)
        );
        assert_eq!(kind(bson::rawdoc! { "find": "c", "$db": "d" }), None);
    }
}
