//! Server-side media agents (DESIGN §5): participants of a room that have no str0m `Rtc` and no
//! network path of their own. The SIP gateway uses one per phone leg: it publishes one Opus audio
//! track (the transcoded phone audio, injected with [`Sfu::handle_agent_audio`]) and receives every
//! audio frame the other members of its room publish, handed to the sink given at
//! [`Sfu::add_agent`].
//!
//! Subscribers see an agent's track like any publisher's: the SFU offers them an m-line for it and
//! writes its frames there (str0m packetizes them as Opus, PT mapped to the subscriber's own).
//!
//! [`Sfu::add_agent`]: super::Sfu::add_agent
//! [`Sfu::handle_agent_audio`]: super::Sfu::handle_agent_audio

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
use str0m::media::{ExtensionValues, Frequency, MediaData, MediaTime, Mid, Pt};
use str0m::rtp::SeqNo;

use super::types::ParticipantId;

/// The mid of an agent's only published track (its m-line name inside the SFU; subscribers get
/// m-lines of their own).
pub const AGENT_AUDIO_MID: &str = "agent0";

/// One Opus frame a room member published, delivered to an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentAudio {
    /// The receiving agent.
    pub agent: ParticipantId,
    /// Who published the frame (one decoder per publisher: the agent mixes them).
    pub from: ParticipantId,
    /// RTP timestamp of the frame, 48 kHz units (RFC 7587 §4.1).
    pub timestamp: u64,
    /// The Opus packet (RFC 6716), as the publisher sent it.
    pub data: Arc<[u8]>,
}

/// Where an agent's received audio goes (the IO shell passes a closure over a channel sender).
/// Called from inside the SFU: it must not block.
pub struct AgentSink(Box<dyn FnMut(AgentAudio) + Send>);

impl AgentSink {
    /// Wraps a closure.
    pub fn new(f: impl FnMut(AgentAudio) + Send + 'static) -> AgentSink {
        AgentSink(Box::new(f))
    }

    pub(crate) fn deliver(&mut self, audio: AgentAudio) {
        (self.0)(audio);
    }
}

impl fmt::Debug for AgentSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentSink")
    }
}

/// An agent participant.
pub(crate) struct Agent {
    pub(crate) room: Arc<str>,
    pub(crate) label: String,
    pub(crate) sink: AgentSink,
    params: PayloadParams,
    seq: u64,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("room", &self.room)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Agent {
    pub(crate) fn new(room: Arc<str>, label: &str, sink: AgentSink) -> Agent {
        // Opus as browsers negotiate it (RFC 7587 §7: always 48000/2 in SDP); subscribers' PTs
        // are matched by codec and clock rate.
        let spec = CodecSpec {
            codec: Codec::Opus,
            clock_rate: Frequency::FORTY_EIGHT_KHZ,
            channels: Some(2),
            format: FormatParams {
                min_p_time: Some(10),
                use_inband_fec: Some(true),
                ..FormatParams::default()
            },
        };
        Agent {
            room,
            label: label.to_string(),
            sink,
            params: PayloadParams::new(Pt::from(111), None, spec),
            seq: 0,
        }
    }

    /// The agent's published track as subscribers see it.
    pub(crate) fn published() -> super::participant::Published {
        super::participant::Published {
            mid: Agent::mid(),
            kind: str0m::media::MediaKind::Audio,
            source: super::types::TrackSource::Audio,
        }
    }

    pub(crate) fn mid() -> Mid {
        Mid::from(AGENT_AUDIO_MID)
    }

    /// A frame as if a publisher had sent it: `timestamp` in 48 kHz units, `level` the RFC 6464
    /// audio level (-dBov, 0..=127) for speaker detection.
    pub(crate) fn frame(
        &mut self,
        now: Instant,
        timestamp: u64,
        level: u8,
        opus: &[u8],
    ) -> MediaData {
        self.seq += 1;
        let seq = SeqNo::from(self.seq);
        let ext_vals = ExtensionValues {
            audio_level: Some(-(level.min(127) as i8)),
            voice_activity: Some(level < 50),
            ..ExtensionValues::default()
        };
        MediaData {
            mid: Agent::mid(),
            pt: self.params.pt(),
            rid: None,
            params: self.params,
            time: MediaTime::new(timestamp, Frequency::FORTY_EIGHT_KHZ),
            network_time: now,
            seq_range: seq..=seq,
            contiguous: true,
            data: Arc::from(opus),
            ext_vals,
            codec_extra: str0m::format::CodecExtra::None,
            last_sender_info: None,
            audio_start_of_talk_spurt: false,
        }
    }
}
