//! What a shard's clients may do: CONNECT's credentials, and the ACL for publishing,
//! subscribing and wills, decided with the auth snapshot in force (SIGHUP swaps it).

use std::sync::Arc;

use crate::auth::{
    Access, AuthDecision, AuthSnapshot, AuthStore, ClientAcl, ClientIdentity, Credentials,
};
use crate::protocol::MqttStr;

use super::Shard;

/// `snapshot`, replaced by the store's current one if a reload happened since.
pub(super) fn refreshed<'a>(
    store: &AuthStore,
    snapshot: &'a mut Arc<AuthSnapshot>,
) -> &'a AuthSnapshot {
    if store.generation() != snapshot.generation() {
        *snapshot = store.current();
    }
    snapshot
}

impl Shard {
    /// Decides with `store` from now on (the broker's files; a new shard allows everyone).
    pub fn set_auth(&mut self, store: Arc<AuthStore>) {
        self.auth_snapshot = store.current();
        self.auth = store;
    }

    /// CONNECT's credentials against the password file [MQTT-3.1.4-2].
    pub fn authenticate(&mut self, credentials: &Credentials<'_>) -> AuthDecision {
        refreshed(&self.auth, &mut self.auth_snapshot)
            .authenticator()
            .authenticate(credentials)
    }

    /// Whether the ACL lets a client with this identity publish its will to `topic`
    /// (checked at CONNECT, as Mosquitto does, since the will is published in its absence).
    pub fn may_publish_will(&mut self, identity: &ClientIdentity, topic: &str) -> bool {
        let snapshot = refreshed(&self.auth, &mut self.auth_snapshot);
        snapshot
            .acl()
            .is_none_or(|acl| acl.check(identity, topic, Access::Write))
    }

    /// Sets the identity the ACL judges a connected session by.
    pub fn set_identity(&mut self, client_id: &MqttStr, username: Option<&str>) {
        let snapshot = refreshed(&self.auth, &mut self.auth_snapshot);
        if let Some(session) = self.sessions.get_mut(client_id) {
            let identity = ClientIdentity::new(client_id.as_str(), username);
            session.acl = Some(ClientAcl::new(snapshot, identity));
        }
    }

    /// Whether the ACL allows `access` to `topic` for this session (decisions cached per
    /// client and topic). Without an ACL file everything is allowed.
    pub fn authorized(&mut self, client_id: &MqttStr, topic: &str, access: Access) -> bool {
        let snapshot = refreshed(&self.auth, &mut self.auth_snapshot);
        if snapshot.acl().is_none() {
            return true;
        }
        self.sessions
            .get_mut(client_id)
            .and_then(|session| session.acl.as_mut())
            .is_some_and(|acl| acl.check(snapshot, topic, access))
    }

    /// Whether a new filter would take this client past `subscriptions_per_client_max`
    /// (replacing one of its filters never does).
    pub fn subscription_quota_reached(&mut self, client_id: &MqttStr, filter: &str) -> bool {
        let max = self.config.subscriptions_per_client_max;
        max > 0
            && self.sessions.get(client_id).is_some_and(|session| {
                !session.subscriptions.contains_key(filter) && session.subscriptions.len() >= max
            })
    }

    /// The ACL's answer to a SUBSCRIBE filter: denied, or allowed (messages delivered
    /// through it are still checked for read access one by one).
    pub fn may_subscribe(&mut self, client_id: &MqttStr, filter: &str) -> bool {
        let snapshot = refreshed(&self.auth, &mut self.auth_snapshot);
        if snapshot.acl().is_none() {
            return true;
        }
        self.sessions
            .get_mut(client_id)
            .and_then(|session| session.acl.as_mut())
            .is_some_and(|acl| acl.check_subscribe(snapshot, filter).is_allowed())
    }
}
