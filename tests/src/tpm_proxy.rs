//! An emulated hardware TPM for measurement: a userspace TCP proxy between a
//! daemon and a swtpm that makes each TPM command take as long as it would
//! on a discrete TPM (issue 16, point 5).
//!
//! # Where it sits
//!
//! A daemon reaches a swtpm through `tpm = "swtpm:host=H,port=P"`: TPM
//! commands on port P, swtpm's control channel on P + 1 (the TCTI derives
//! it; see `quorate_host::tpm::swtpm`). The proxy listens on its own pair
//! Q, Q + 1 and the daemon is given `swtpm:host=127.0.0.1,port=Q`; nothing
//! else about the daemon changes, and nothing in it can tell the proxy is
//! there. The control port is forwarded byte for byte. The command port is
//! parsed: each command is forwarded whole, its answer read whole, and the
//! answer handed back only once the command's emulated latency
//! ([`LatencyModel`]) has passed since it was sent on.
//!
//! # Framing on the command port
//!
//! swtpm's socket server (`src/swtpm/mainloop.c`, `tpmlib.c` in
//! stefanberger/swtpm) accepts two framings, and so does the proxy
//! ([`parse_command`], [`response_len`]):
//!
//! - **Raw TPM 2.0**, which the tpm2-tss swtpm TCTI (`tcti-swtpm.c`) sends,
//!   one TCP connection per command: the command itself (tag u16 =
//!   `TPM_ST_NO_SESSIONS` 0x8001 or `TPM_ST_SESSIONS` 0x8002, size u32
//!   counting the whole command, command code u32, ...), answered by the bare
//!   response (tag u16, size u32, response code u32, ...).
//! - **The MS-simulator prefix** that the tpm2-tss mssim TCTI
//!   (`tcti-mssim.c`) sends: u32 `TPM_SEND_COMMAND` (8), u8 locality, u32
//!   length, then the command; answered by u32 length, the response, and a
//!   u32 acknowledgement (0).
//!
//! All integers are big-endian. Anything else is refused with a typed
//! [`FrameError`] and the connection is closed (the parser never panics and
//! never trusts a length beyond [`MAX_FRAME`]).
//!
//! # One command at a time
//!
//! A hardware TPM executes one command at a time, so the proxy holds one
//! lock (the "chip") from forwarding a command until its delayed answer is
//! released: a second command waits behind the first, as it would on the
//! bus. Each command goes to swtpm on a fresh connection (swtpm serves one
//! client at a time, and a client that kept its connection open would
//! otherwise block every other).
//!
//! # The latencies, and where they come from
//!
//! [`LatencyModel::discrete_tpm`] sets the emulated time per command code:
//!
//! | commands | emulated | source |
//! |---|---|---|
//! | `TPM2_Sign` (ECDSA P-256) | 200 ms | Chrome's field study of TPM ECDSA P-256 signing: 200 ms at the 50th, 600 ms at the 95th percentile, as reported with an own benchmark (single-digit signatures per second on most machines) in S. Kristiansen, "TPM performance", <https://stiankri.substack.com/p/tpm-performance> |
//! | `Quote`, `Certify`, `CertifyCreation`, `GetTime`, `NV_Certify` | 200 ms | the same ECDSA signature, over an attestation structure |
//! | `VerifySignature`, `ActivateCredential`, `ECDH_ZGen` | 200 ms | one or two ECC point multiplications, as a signature |
//! | `CreatePrimary`, `Create`, `CreateLoaded` (ECC) | 250 ms | key derivation plus a point multiplication |
//! | `EvictControl`, `NV_Write`, `NV_DefineSpace` | 60 ms | an NV (flash) write |
//! | `Load`, `LoadExternal`, `StartAuthSession` | 40 ms | blob decryption and integrity check, session set-up |
//! | `ContextSave`, `ContextLoad`, `NV_Read`, `Startup`, `Shutdown` | 20–30 ms | |
//! | `PCR_Extend`, `PCR_Reset`, `Policy*`, `Hash`, `HMAC` | 15 ms | |
//! | `PCR_Read`, `GetRandom`, `GetCapability`, `ReadPublic`, `FlushContext`, ... | 10 ms | |
//! | any other command | 20 ms | |
//!
//! Only the signing figure is a published measurement; the rest are
//! estimates in the "tens of milliseconds" range that vendors' parts show
//! for non-asymmetric commands — no per-command table for TPM 2.0 parts was
//! found to cite. [`LatencyModel::scaled`] scales them all, and
//! [`LatencyModel::with_sign`] sets the signature class alone, so a run can
//! say which figure it used. The emulated time includes swtpm's own time:
//! the proxy sleeps only for what is left, so a 200 ms command takes 200 ms
//! (not 200 ms plus swtpm's 1 ms).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};

/// The MS-simulator platform command that carries a TPM command.
pub const TPM_SEND_COMMAND: u32 = 8;
/// `TPM_ST_NO_SESSIONS`: a command (or response) without authorisation area.
pub const TPM_ST_NO_SESSIONS: u16 = 0x8001;
/// `TPM_ST_SESSIONS`: a command (or response) with one.
pub const TPM_ST_SESSIONS: u16 = 0x8002;
/// The largest frame the proxy accepts (swtpm's own buffer is 4 KiB; any
/// length above this is a framing error, not an allocation).
pub const MAX_FRAME: usize = 64 * 1024;
/// A TPM 2.0 command or response header: tag u16, size u32, code u32.
pub const HEADER_LEN: usize = 10;
/// The MS-simulator prefix: u32 command, u8 locality, u32 length.
pub const MSSIM_PREFIX_LEN: usize = 9;

/// A TPM 2.0 command code (`TPM_CC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandCode(pub u32);

impl CommandCode {
    /// `TPM2_Sign`.
    pub const SIGN: CommandCode = CommandCode(0x15D);
    /// `TPM2_Quote`.
    pub const QUOTE: CommandCode = CommandCode(0x158);
    /// `TPM2_Certify`.
    pub const CERTIFY: CommandCode = CommandCode(0x148);
    /// `TPM2_GetRandom`.
    pub const GET_RANDOM: CommandCode = CommandCode(0x17B);
    /// `TPM2_PCR_Read`.
    pub const PCR_READ: CommandCode = CommandCode(0x17E);
    /// `TPM2_Shutdown`.
    pub const SHUTDOWN: CommandCode = CommandCode(0x145);
}

impl std::fmt::Display for CommandCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TPM_CC {:#x}", self.0)
    }
}

/// How a command arrived (and so how its answer must be framed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A bare TPM 2.0 command; the answer is the bare response.
    Raw,
    /// Behind the MS-simulator `TPM_SEND_COMMAND` prefix; the answer is
    /// length-prefixed and followed by a u32 acknowledgement.
    Mssim {
        /// The locality the client asked for.
        locality: u8,
    },
}

/// One complete command at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandFrame {
    /// Its framing.
    pub framing: Framing,
    /// The TPM command code in its header.
    pub code: CommandCode,
    /// Bytes of the buffer the frame occupies, prefix included.
    pub len: usize,
}

/// Why bytes on the command port are not a TPM command (or response) the
/// proxy can forward. Every variant is the client's (or swtpm's) doing; the
/// proxy closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Neither a TPM 2.0 tag nor the MS-simulator `TPM_SEND_COMMAND`.
    #[error("not a TPM 2.0 command (tag {tag:#06x}) nor an MS-simulator TPM_SEND_COMMAND (first word {word:#010x}): point the client at a TPM 2.0 simulator port")]
    UnknownFraming {
        /// The first two bytes, as a tag.
        tag: u16,
        /// The first four bytes, as a platform command.
        word: u32,
    },
    /// A size below the 10-byte header.
    #[error("TPM size field {0} is below the 10-byte header")]
    SizeBelowHeader(u32),
    /// A size beyond [`MAX_FRAME`].
    #[error("frame of {0} bytes is beyond the proxy's {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    /// The MS-simulator length and the TPM header's size disagree.
    #[error("MS-simulator length {prefix} disagrees with the TPM header's size {header}")]
    LengthMismatch {
        /// The prefix's length.
        prefix: u32,
        /// The header's size.
        header: u32,
    },
    /// A response with a tag that is not TPM 2.0's.
    #[error("swtpm answered with tag {0:#06x}, not a TPM 2.0 response")]
    BadResponseTag(u16),
    /// The connection ended inside a frame.
    #[error("connection closed {got} bytes into a frame")]
    Truncated {
        /// Bytes of the frame received.
        got: usize,
    },
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([*s.first()?, *s.get(1)?]))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(s))
}

/// Checks a TPM 2.0 size field and returns it as a length.
fn checked_size(size: u32) -> Result<usize, FrameError> {
    if (size as usize) < HEADER_LEN {
        return Err(FrameError::SizeBelowHeader(size));
    }
    if size as usize > MAX_FRAME {
        return Err(FrameError::TooLarge(u64::from(size)));
    }
    Ok(size as usize)
}

/// Parses the command at the front of `buf`: `Ok(None)` while more bytes
/// are needed, the frame once it is complete, an error as soon as the bytes
/// seen cannot start one.
pub fn parse_command(buf: &[u8]) -> Result<Option<CommandFrame>, FrameError> {
    let Some(tag) = be_u16(buf, 0) else {
        return Ok(None);
    };
    if tag == TPM_ST_NO_SESSIONS || tag == TPM_ST_SESSIONS {
        let Some(size) = be_u32(buf, 2) else {
            return Ok(None);
        };
        let len = checked_size(size)?;
        let Some(code) = be_u32(buf, 6) else {
            return Ok(None);
        };
        if buf.len() < len {
            return Ok(None);
        }
        return Ok(Some(CommandFrame {
            framing: Framing::Raw,
            code: CommandCode(code),
            len,
        }));
    }
    let Some(word) = be_u32(buf, 0) else {
        // Two bytes that are no tag: only TPM_SEND_COMMAND (0x0000_0008)
        // can still start a frame.
        if tag == 0 {
            return Ok(None);
        }
        return Err(FrameError::UnknownFraming {
            tag,
            word: u32::from(tag) << 16,
        });
    };
    if word != TPM_SEND_COMMAND {
        return Err(FrameError::UnknownFraming { tag, word });
    }
    let (Some(locality), Some(length)) = (buf.get(4).copied(), be_u32(buf, 5)) else {
        return Ok(None);
    };
    if length as usize > MAX_FRAME {
        return Err(FrameError::TooLarge(u64::from(length)));
    }
    let inner = buf.get(MSSIM_PREFIX_LEN..).unwrap_or_default();
    let (Some(inner_tag), Some(size), Some(code)) =
        (be_u16(inner, 0), be_u32(inner, 2), be_u32(inner, 6))
    else {
        if (length as usize) < HEADER_LEN {
            return Err(FrameError::SizeBelowHeader(length));
        }
        return Ok(None);
    };
    if inner_tag != TPM_ST_NO_SESSIONS && inner_tag != TPM_ST_SESSIONS {
        return Err(FrameError::UnknownFraming {
            tag: inner_tag,
            word: be_u32(inner, 0).unwrap_or_default(),
        });
    }
    checked_size(size)?;
    if size != length {
        return Err(FrameError::LengthMismatch {
            prefix: length,
            header: size,
        });
    }
    let len = MSSIM_PREFIX_LEN + length as usize;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(CommandFrame {
        framing: Framing::Mssim { locality },
        code: CommandCode(code),
        len,
    }))
}

/// The length of the response to a command sent with `framing`, from the
/// bytes of it received so far: `Ok(None)` until its size is known.
pub fn response_len(buf: &[u8], framing: Framing) -> Result<Option<usize>, FrameError> {
    match framing {
        Framing::Raw => {
            let Some(tag) = be_u16(buf, 0) else {
                return Ok(None);
            };
            if tag != TPM_ST_NO_SESSIONS && tag != TPM_ST_SESSIONS {
                return Err(FrameError::BadResponseTag(tag));
            }
            match be_u32(buf, 2) {
                Some(size) => checked_size(size).map(Some),
                None => Ok(None),
            }
        }
        Framing::Mssim { .. } => match be_u32(buf, 0) {
            // u32 length, the response, u32 acknowledgement.
            Some(length) if length as usize > MAX_FRAME => {
                Err(FrameError::TooLarge(u64::from(length)))
            }
            Some(length) => Ok(Some(4 + length as usize + 4)),
            None => Ok(None),
        },
    }
}

/// How long the emulated TPM takes for each command.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    sign: Duration,
    scale: f64,
    zero: bool,
}

/// The emulated latency classes of [`LatencyModel::discrete_tpm`], in ms.
fn discrete_ms(code: CommandCode, sign_ms: f64) -> f64 {
    match code.0 {
        // Sign, Quote, Certify, CertifyCreation, GetTime, NV_Certify.
        0x15D | 0x158 | 0x148 | 0x14A | 0x14C | 0x184 => sign_ms,
        // VerifySignature, ActivateCredential, ECDH_ZGen.
        0x177 | 0x147 | 0x154 => sign_ms,
        // CreatePrimary, Create, CreateLoaded.
        0x131 | 0x153 | 0x191 => sign_ms * 1.25,
        // EvictControl, NV_Write, NV_DefineSpace.
        0x120 | 0x137 | 0x12A => 60.0,
        // Load, LoadExternal, StartAuthSession.
        0x157 | 0x167 | 0x176 => 40.0,
        // Startup, Shutdown.
        0x144 | 0x145 => 30.0,
        // ContextSave, ContextLoad, NV_Read.
        0x162 | 0x161 | 0x14E => 20.0,
        // PCR_Extend, PCR_Reset, Hash, HMAC, PolicyPCR, PolicyGetDigest,
        // PolicyRestart, PolicySecret, PolicyAuthValue, PolicyCommandCode.
        0x182 | 0x13D | 0x17D | 0x155 | 0x17F | 0x189 | 0x180 | 0x151 | 0x16B | 0x16C => 15.0,
        // PCR_Read, GetRandom, GetCapability, ReadPublic, FlushContext,
        // NV_ReadPublic, ReadClock, TestParms, SelfTest.
        0x17E | 0x17B | 0x17A | 0x173 | 0x165 | 0x169 | 0x181 | 0x18A | 0x143 => 10.0,
        _ => 20.0,
    }
}

impl LatencyModel {
    /// A discrete hardware TPM (see the module docs for the figures).
    pub fn discrete_tpm() -> Self {
        LatencyModel {
            sign: Duration::from_millis(200),
            scale: 1.0,
            zero: false,
        }
    }

    /// No added latency: a plain forwarder (for checking the proxy itself).
    pub fn none() -> Self {
        LatencyModel {
            sign: Duration::ZERO,
            scale: 0.0,
            zero: true,
        }
    }

    /// Every latency multiplied by `factor` (clamped to 0..=100).
    pub fn scaled(mut self, factor: f64) -> Self {
        self.scale = if factor.is_finite() {
            factor.clamp(0.0, 100.0)
        } else {
            1.0
        };
        self
    }

    /// The signature class (signatures, quotes, certifications, and the
    /// key creations derived from it) at `sign` before scaling.
    pub fn with_sign(mut self, sign: Duration) -> Self {
        self.sign = sign;
        self
    }

    /// The emulated latency of a TPM signature.
    pub fn sign(&self) -> Duration {
        self.latency(CommandCode::SIGN)
    }

    /// How long the emulated TPM takes for `code`.
    pub fn latency(&self, code: CommandCode) -> Duration {
        if self.zero {
            return Duration::ZERO;
        }
        let ms = discrete_ms(code, self.sign.as_secs_f64() * 1e3) * self.scale;
        Duration::from_secs_f64((ms / 1e3).max(0.0))
    }
}

/// Counters of what went through the proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Commands forwarded and answered.
    pub commands: AtomicU64,
    /// Of those, signatures (`TPM2_Sign`).
    pub signs: AtomicU64,
    /// Of those, quotes and certifications.
    pub attests: AtomicU64,
    /// Connections closed on a framing error.
    pub frame_errors: AtomicU64,
    /// Commands that could not reach swtpm or got no full answer.
    pub upstream_errors: AtomicU64,
    /// Emulated delay added in all (microseconds): time slept beyond
    /// swtpm's own.
    pub added_micros: AtomicU64,
}

impl ProxyStats {
    fn count(&self, code: CommandCode, added: Duration) {
        self.commands.fetch_add(1, Ordering::Relaxed);
        if code == CommandCode::SIGN {
            self.signs.fetch_add(1, Ordering::Relaxed);
        }
        if code == CommandCode::QUOTE || code == CommandCode::CERTIFY {
            self.attests.fetch_add(1, Ordering::Relaxed);
        }
        self.added_micros
            .fetch_add(added.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// No free pair of loopback ports Q, Q + 1 could be bound.
    #[error("no free pair of loopback ports for the TPM proxy: {0}")]
    NoPorts(#[source] std::io::Error),
    /// Its runtime could not be built.
    #[error("cannot start the TPM proxy's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A running proxy in front of one swtpm, stopped on drop.
#[derive(Debug)]
pub struct TpmProxy {
    port: u16,
    stats: Arc<ProxyStats>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Tries to bind Q and Q + 1 on loopback for a few free Q.
fn bind_pair() -> std::io::Result<(std::net::TcpListener, std::net::TcpListener)> {
    let mut last = std::io::Error::from(std::io::ErrorKind::AddrInUse);
    for _ in 0..32 {
        let a = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let Some(next) = a.local_addr()?.port().checked_add(1) else {
            continue;
        };
        match std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, next)) {
            Ok(b) => return Ok((a, b)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl TpmProxy {
    /// Starts a proxy in front of the swtpm on `127.0.0.1:upstream` (control
    /// port `upstream + 1`), adding `model`'s latency, on its own thread.
    pub fn start(upstream: u16, model: LatencyModel) -> Result<TpmProxy, ProxyError> {
        let (cmd, ctrl) = bind_pair().map_err(ProxyError::NoPorts)?;
        let port = cmd.local_addr().map_err(ProxyError::NoPorts)?.port();
        for l in [&cmd, &ctrl] {
            l.set_nonblocking(true).map_err(ProxyError::NoPorts)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ProxyError::Runtime)?;
        let stats = Arc::new(ProxyStats::default());
        let (stop, stopped) = watch::channel(false);
        let up_cmd = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream));
        let up_ctrl = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream.saturating_add(1)));
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tpm-proxy-{port}"))
            .spawn(move || {
                rt.block_on(async move {
                    let (Ok(cmd), Ok(ctrl)) =
                        (TcpListener::from_std(cmd), TcpListener::from_std(ctrl))
                    else {
                        return;
                    };
                    let chip = Arc::new(Mutex::new(()));
                    let mut stopped = stopped;
                    tokio::select! {
                        _ = serve_commands(cmd, up_cmd, model, chip, st) => {}
                        _ = serve_control(ctrl, up_ctrl) => {}
                        // Stop asked for, or the handle dropped.
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
            })
            .map_err(ProxyError::Runtime)?;
        Ok(TpmProxy {
            port,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// The command port the daemon should use (control port one above).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The daemon's `tpm` setting for this proxy.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// What went through so far.
    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }
}

impl Drop for TpmProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_commands(
    listener: TcpListener,
    upstream: SocketAddr,
    model: LatencyModel,
    chip: Arc<Mutex<()>>,
    stats: Arc<ProxyStats>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or the like: do not spin on it.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (model, chip, stats) = (model.clone(), chip.clone(), stats.clone());
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            if let Err(e) = serve_client(client, upstream, &model, &chip, &stats).await {
                match e {
                    ClientEnd::Frame(_) => stats.frame_errors.fetch_add(1, Ordering::Relaxed),
                    ClientEnd::Upstream(_) => stats.upstream_errors.fetch_add(1, Ordering::Relaxed),
                    ClientEnd::Client(_) => 0,
                };
            }
        });
    }
}

/// Why a proxied connection ended early.
#[derive(Debug)]
enum ClientEnd {
    /// The client sent something that is not a command.
    Frame(#[allow(dead_code)] FrameError),
    /// swtpm could not be reached or answered short.
    Upstream(#[allow(dead_code)] std::io::Error),
    /// Reading from or writing to the client failed.
    Client(#[allow(dead_code)] std::io::Error),
}

/// Serves one client connection: command after command until it closes.
async fn serve_client(
    mut client: TcpStream,
    upstream: SocketAddr,
    model: &LatencyModel,
    chip: &Mutex<()>,
    stats: &ProxyStats,
) -> Result<(), ClientEnd> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let frame = loop {
            match parse_command(&buf).map_err(ClientEnd::Frame)? {
                Some(f) => break f,
                None => {
                    let n = client.read(&mut chunk).await.map_err(ClientEnd::Client)?;
                    if n == 0 {
                        if buf.is_empty() {
                            return Ok(());
                        }
                        return Err(ClientEnd::Frame(FrameError::Truncated { got: buf.len() }));
                    }
                    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                }
            }
        };
        let command: Vec<u8> = buf.drain(..frame.len).collect();
        let answer = {
            let _chip = chip.lock().await;
            let started = Instant::now();
            let answer = exchange(upstream, &command, frame.framing).await?;
            let target = model.latency(frame.code);
            let added = target.saturating_sub(started.elapsed());
            if !added.is_zero() {
                tokio::time::sleep(added).await;
            }
            stats.count(frame.code, added);
            answer
        };
        client.write_all(&answer).await.map_err(ClientEnd::Client)?;
    }
}

/// Sends one command to swtpm on a fresh connection and reads its answer.
async fn exchange(
    upstream: SocketAddr,
    command: &[u8],
    framing: Framing,
) -> Result<Vec<u8>, ClientEnd> {
    let mut up = TcpStream::connect(upstream)
        .await
        .map_err(ClientEnd::Upstream)?;
    let _ = up.set_nodelay(true);
    up.write_all(command).await.map_err(ClientEnd::Upstream)?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(len) = response_len(&answer, framing).map_err(ClientEnd::Frame)? {
            if answer.len() >= len {
                answer.truncate(len);
                return Ok(answer);
            }
        }
        let n = up.read(&mut chunk).await.map_err(ClientEnd::Upstream)?;
        if n == 0 {
            return Err(ClientEnd::Upstream(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                FrameError::Truncated { got: answer.len() },
            )));
        }
        answer.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// Forwards the control port unchanged, one upstream connection per client.
async fn serve_control(listener: TcpListener, upstream: SocketAddr) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut up) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorate_host::tpm::swtpm::Swtpm;
    use std::io::{Read, Write};

    const GET_RANDOM_8: [u8; 12] = [
        0x80, 0x01, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x01, 0x7b, 0x00, 0x08,
    ];

    fn mssim(locality: u8, cmd: &[u8]) -> Vec<u8> {
        let mut v = TPM_SEND_COMMAND.to_be_bytes().to_vec();
        v.push(locality);
        v.extend_from_slice(&(cmd.len() as u32).to_be_bytes());
        v.extend_from_slice(cmd);
        v
    }

    #[test]
    fn raw_command_is_parsed_once_complete() {
        for cut in 0..GET_RANDOM_8.len() {
            assert_eq!(
                parse_command(&GET_RANDOM_8[..cut]),
                Ok(None),
                "cut at {cut}"
            );
        }
        let mut two = GET_RANDOM_8.to_vec();
        two.extend_from_slice(&GET_RANDOM_8);
        let f = parse_command(&two).unwrap().unwrap();
        assert_eq!(
            f,
            CommandFrame {
                framing: Framing::Raw,
                code: CommandCode::GET_RANDOM,
                len: 12
            }
        );
    }

    #[test]
    fn mssim_command_carries_locality_and_length() {
        let m = mssim(3, &GET_RANDOM_8);
        for cut in 0..m.len() {
            assert_eq!(parse_command(&m[..cut]), Ok(None), "cut at {cut}");
        }
        let f = parse_command(&m).unwrap().unwrap();
        assert_eq!(f.framing, Framing::Mssim { locality: 3 });
        assert_eq!(f.code, CommandCode::GET_RANDOM);
        assert_eq!(f.len, MSSIM_PREFIX_LEN + 12);
    }

    #[test]
    fn bad_commands_are_typed_errors() {
        assert!(matches!(
            parse_command(b"GET / HTTP/1.1\r\n"),
            Err(FrameError::UnknownFraming { .. })
        ));
        // A TPM_SEND_COMMAND whose inner bytes are no TPM command.
        let mut m = mssim(0, &GET_RANDOM_8);
        m[MSSIM_PREFIX_LEN] = 0x12;
        assert!(matches!(
            parse_command(&m),
            Err(FrameError::UnknownFraming { .. })
        ));
        // Header size below the header itself.
        let mut short = GET_RANDOM_8;
        short[5] = 4;
        assert_eq!(parse_command(&short), Err(FrameError::SizeBelowHeader(4)));
        // A size that would make the proxy buffer 4 GiB.
        let mut huge = GET_RANDOM_8;
        huge[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            parse_command(&huge),
            Err(FrameError::TooLarge(u64::from(u32::MAX)))
        );
        let mut huge_prefix = mssim(0, &GET_RANDOM_8);
        huge_prefix[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_command(&huge_prefix),
            Err(FrameError::TooLarge(_))
        ));
        // Prefix length and header size disagree.
        let mut lying = mssim(0, &GET_RANDOM_8);
        lying[5..9].copy_from_slice(&20u32.to_be_bytes());
        assert_eq!(
            parse_command(&lying),
            Err(FrameError::LengthMismatch {
                prefix: 20,
                header: 12
            })
        );
        // A prefix announcing less than a header.
        let tiny = [0, 0, 0, 8, 0, 0, 0, 0, 2, 0x80];
        assert_eq!(parse_command(&tiny), Err(FrameError::SizeBelowHeader(2)));
        // Responses.
        assert_eq!(
            response_len(&[0x12, 0x34, 0, 0, 0, 10], Framing::Raw),
            Err(FrameError::BadResponseTag(0x1234))
        );
        assert_eq!(
            response_len(&[0x80, 0x01, 0, 0], Framing::Raw),
            Ok(None),
            "size not yet known"
        );
        assert_eq!(
            response_len(&[0x80, 0x01, 0, 0, 0, 3], Framing::Raw),
            Err(FrameError::SizeBelowHeader(3))
        );
        assert_eq!(
            response_len(&[0, 0, 0, 10], Framing::Mssim { locality: 0 }),
            Ok(Some(18))
        );
        assert!(response_len(&[0xff; 4], Framing::Mssim { locality: 0 }).is_err());
    }

    #[test]
    fn parser_never_panics_on_arbitrary_bytes() {
        // A deterministic sweep of short inputs and mutations of valid ones.
        let mut seeds: Vec<Vec<u8>> = vec![GET_RANDOM_8.to_vec(), mssim(0, &GET_RANDOM_8)];
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let base = &seeds[(x % 2) as usize];
            let mut v = base[..(x as usize >> 8) % (base.len() + 1)].to_vec();
            if !v.is_empty() {
                let i = (x as usize >> 4) % v.len();
                v[i] ^= (x >> 24) as u8;
            }
            let _ = parse_command(&v);
            let _ = response_len(&v, Framing::Raw);
            let _ = response_len(&v, Framing::Mssim { locality: 0 });
            if v.len() < 16 {
                seeds.push(v);
                seeds.truncate(64);
            }
        }
        for len in 0..12 {
            for b in [0u8, 0x08, 0x80, 0xff] {
                let _ = parse_command(&vec![b; len]);
            }
        }
    }

    #[test]
    fn latency_model_follows_the_published_figures() {
        let m = LatencyModel::discrete_tpm();
        assert_eq!(m.sign(), Duration::from_millis(200));
        assert_eq!(m.latency(CommandCode::QUOTE), Duration::from_millis(200));
        assert!(m.latency(CommandCode::PCR_READ) < Duration::from_millis(50));
        assert_eq!(
            m.clone().scaled(0.5).latency(CommandCode::SIGN),
            Duration::from_millis(100)
        );
        assert_eq!(
            m.with_sign(Duration::from_millis(50)).sign(),
            Duration::from_millis(50)
        );
        assert_eq!(LatencyModel::none().sign(), Duration::ZERO);
    }

    /// Sends `cmd` as one connection's only command and returns the answer.
    fn raw_call(port: u16, cmd: &[u8], answer_len_of: Framing) -> Vec<u8> {
        let mut s = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(cmd).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(len) = response_len(&got, answer_len_of).unwrap() {
                if got.len() >= len {
                    return got;
                }
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
    }

    #[test]
    fn proxies_a_real_swtpm_with_the_emulated_latency() {
        let dir = tempfile::tempdir().unwrap();
        let mut tpm = Swtpm::spawn(&dir.path().join("tpm")).unwrap();
        let model = LatencyModel::discrete_tpm().with_sign(Duration::from_millis(80));
        let proxy = TpmProxy::start(tpm.port(), model.clone()).unwrap();

        // Raw framing (the swtpm TCTI's): an answer after the emulated time.
        let t = Instant::now();
        let r = raw_call(proxy.port(), &GET_RANDOM_8, Framing::Raw);
        assert!(t.elapsed() >= model.latency(CommandCode::GET_RANDOM));
        assert_eq!(&r[..2], &[0x80, 0x01]);
        assert_eq!(&r[6..10], &[0, 0, 0, 0], "TPM_RC_SUCCESS");
        assert_eq!(r.len(), 10 + 2 + 8, "header, TPM2B size, 8 random bytes");

        // MS-simulator framing: length, response, acknowledgement.
        let r = raw_call(
            proxy.port(),
            &mssim(0, &GET_RANDOM_8),
            Framing::Mssim { locality: 0 },
        );
        assert_eq!(&r[..4], &20u32.to_be_bytes());
        assert_eq!(&r[4..6], &[0x80, 0x01]);
        assert_eq!(&r[r.len() - 4..], &[0, 0, 0, 0], "ack");

        // Two commands on one connection, both answered in order.
        let mut s = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut two = GET_RANDOM_8.to_vec();
        two.extend_from_slice(&GET_RANDOM_8);
        s.write_all(&two).unwrap();
        let mut got = vec![0u8; 40];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got[20..22], &[0x80, 0x01]);
        drop(s);

        // The control port is forwarded: CMD_GET_CAPABILITY (1) answers
        // with result 0 and a capability word.
        let mut c = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port() + 1)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&1u32.to_be_bytes()).unwrap();
        let mut cap = [0u8; 8];
        c.read_exact(&mut cap).unwrap();
        assert_eq!(&cap[..4], &[0, 0, 0, 0]);
        drop(c);

        // Garbage is refused (connection closed, counted), and the proxy
        // keeps serving.
        let mut g = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port())).unwrap();
        g.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        g.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut rest = Vec::new();
        assert_eq!(g.read_to_end(&mut rest).unwrap_or(0), 0);
        let r = raw_call(proxy.port(), &GET_RANDOM_8, Framing::Raw);
        assert_eq!(&r[6..10], &[0, 0, 0, 0]);
        let st = proxy.stats();
        assert_eq!(st.frame_errors.load(Ordering::Relaxed), 1);
        assert_eq!(st.commands.load(Ordering::Relaxed), 5);
        assert_eq!(st.upstream_errors.load(Ordering::Relaxed), 0);
        drop(proxy);
        tpm.stop().unwrap();
    }

    #[test]
    fn a_tss_context_signs_through_the_proxy_at_the_emulated_rate() {
        use quorate_host::tpm::TpmHandle;
        let dir = tempfile::tempdir().unwrap();
        let mut tpm = Swtpm::spawn(&dir.path().join("tpm")).unwrap();
        let model = LatencyModel::discrete_tpm().with_sign(Duration::from_millis(60));
        let proxy = TpmProxy::start(tpm.port(), model.clone()).unwrap();
        let tcti: quorate_host::tpm::tcti::Tcti = match proxy.tcti().parse().unwrap() {
            quorate_host::tpm::tcti::TpmTarget::Tcti(t) => t,
            other => panic!("{other:?}"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let h = TpmHandle::open(&tcti).await.unwrap();
            let key = h
                .create_vote_key(quorate_host::tpm::KeySpec::vote_password())
                .await
                .unwrap();
            h.load_vote_key(key.blob, Some(key.srk_name)).await.unwrap();
            let signs_before = proxy.stats().signs.load(Ordering::Relaxed);
            let t = Instant::now();
            for i in 0..3u8 {
                h.sign(vec![i; 32]).await.unwrap();
            }
            // Three signatures, one at a time on the emulated chip.
            assert!(t.elapsed() >= 3 * model.sign());
            assert_eq!(
                proxy.stats().signs.load(Ordering::Relaxed),
                signs_before + 3
            );
            h.close().await.unwrap();
        });
        assert_eq!(proxy.stats().frame_errors.load(Ordering::Relaxed), 0);
        drop(proxy);
        tpm.stop().unwrap();
    }
}
