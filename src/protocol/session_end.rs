//! DISCONNECT and AUTH: packets that are a reason code and properties (AUTH is 5.0 only; a 3.x
//! DISCONNECT is empty).

use bytes::BytesMut;

use super::wire::Reader;
use super::{
    read_reason_tail, reason_tail_len, write_reason_tail, DecodeError, PacketType, Properties,
    PropertyContext, ProtocolVersion, ReasonCode,
};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// Reason codes a DISCONNECT may carry (section 3.14.2.1), from either side.
pub(super) const DISCONNECT_REASONS: &[ReasonCode] = {
    use ReasonCode::*;
    &[
        Success,
        DisconnectWithWillMessage,
        UnspecifiedError,
        MalformedPacket,
        ProtocolError,
        ImplementationSpecificError,
        NotAuthorized,
        ServerBusy,
        ServerShuttingDown,
        KeepAliveTimeout,
        SessionTakenOver,
        TopicFilterInvalid,
        TopicNameInvalid,
        ReceiveMaximumExceeded,
        TopicAliasInvalid,
        PacketTooLarge,
        MessageRateTooHigh,
        QuotaExceeded,
        AdministrativeAction,
        PayloadFormatInvalid,
        RetainNotSupported,
        QosNotSupported,
        UseAnotherServer,
        ServerMoved,
        SharedSubscriptionsNotSupported,
        ConnectionRateExceeded,
        MaximumConnectTime,
        SubscriptionIdentifiersNotSupported,
        WildcardSubscriptionsNotSupported,
    ]
};

pub(super) const AUTH_REASONS: &[ReasonCode] =
    &[ReasonCode::Success, ReasonCode::ContinueAuthentication, ReasonCode::ReAuthenticate];

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Self {
        Disconnect { reason, properties: Properties::default() }
    }

    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        if !version.is_v5() {
            return Ok(Disconnect::default());
        }
        let (reason, properties) = read_reason_tail(
            reader,
            PacketType::Disconnect,
            PropertyContext::Disconnect,
            DISCONNECT_REASONS,
        )?;
        Ok(Disconnect { reason, properties })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        if version.is_v5() {
            reason_tail_len(self.reason, &self.properties)
        } else {
            0
        }
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        if version.is_v5() {
            write_reason_tail(buf, self.reason, &self.properties);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Auth {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Self, DecodeError> {
        let (reason, properties) =
            read_reason_tail(reader, PacketType::Auth, PropertyContext::Auth, AUTH_REASONS)?;
        Ok(Auth { reason, properties })
    }

    pub(crate) fn body_len(&self) -> usize {
        reason_tail_len(self.reason, &self.properties)
    }

    pub(crate) fn write_body(&self, buf: &mut BytesMut) {
        write_reason_tail(buf, self.reason, &self.properties);
    }
}
