//! Length-prefixed frames on a byte stream: a 4-byte big-endian length, then
//! that many bytes. A frame longer than the configured limit is an error and
//! the connection is closed; nothing is allocated for it.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default largest frame accepted from a peer (4 MiB).
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// Why reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame larger than the limit (peer misbehaviour).
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The connection closed cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The connection failed or closed inside a frame.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame of at most `max` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let len = read_len(r, max).await?;
    read_body(r, len).await
}

/// Reads a frame's length prefix, refusing one over `max`; the caller then
/// reads the body with [`read_body`] (and may first reserve room for it).
pub async fn read_len<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<usize, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Reads the `len` bytes of a frame body (a length [`read_len`] accepted).
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame. The caller keeps frames within the peer's limit.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(data.len()).map_err(|_| FrameError::TooLarge {
        len: data.len(),
        max: u32::MAX as usize,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(data).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, b"hello").await.unwrap();
        write_frame(&mut a, b"").await.unwrap();
        write_frame(&mut a, &[7u8; 100]).await.unwrap();
        assert_eq!(read_frame(&mut b, 64).await.unwrap(), b"hello");
        assert_eq!(read_frame(&mut b, 64).await.unwrap(), b"");
        assert!(matches!(
            read_frame(&mut b, 64).await,
            Err(FrameError::TooLarge { len: 100, max: 64 })
        ));
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error_and_clean_close_is_closed() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, 64).await,
            Err(FrameError::Io(_))
        ));
        let (a, mut b) = tokio::io::duplex(16);
        drop(a);
        assert!(matches!(
            read_frame(&mut b, 64).await,
            Err(FrameError::Closed)
        ));
    }
}
