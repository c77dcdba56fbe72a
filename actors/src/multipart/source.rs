//! The source of an upload: a file read part by part, or a stream read once, in order.

use super::*;

/// A readable source for an upload.
pub type SourceReader = Box<dyn AsyncRead + Send + Unpin>;

/// Reads up to `n` bytes (fewer only at the end of the source).
pub(crate) async fn read_part(
    reader: &mut SourceReader,
    n: u64,
    what: &str,
) -> Result<Bytes, Error> {
    let mut buf = BytesMut::with_capacity(n as usize);
    while (buf.len() as u64) < n {
        let want = (n - buf.len() as u64) as usize;
        let before = buf.len();
        let got = (&mut *reader)
            .take(want as u64)
            .read_buf(&mut buf)
            .await
            .map_err(|e| Error::io(what.to_owned(), e))?;
        if got == 0 || buf.len() == before {
            break;
        }
    }
    Ok(buf.freeze())
}

pub(crate) async fn open_source(job: &mut UploadRequest) -> Result<SourceReader, Error> {
    match &job.source {
        UploadSource::File {
            path,
            size,
            mtime_ns,
        } => {
            let (now_size, now_mtime) =
                file_identity(path).await.map_err(|message| Error::Source {
                    io: None,
                    what: path.clone(),
                    message,
                })?;
            if now_size != *size || now_mtime != *mtime_ns {
                return Err(Error::SourceChanged {
                    source_path: path.clone(),
                    reason: format!(
                        "size {now_size} / mtime {now_mtime} ns now, {size} / {mtime_ns} ns when the put started"
                    ),
                });
            }
            let f = tokio::fs::File::open(path)
                .await
                .map_err(|e| Error::io(path.clone(), e))?;
            Ok(Box::new(f))
        }
        UploadSource::Stream => job.reader.take().ok_or_else(|| Error::SourceChanged {
            source_path: "<stream>".into(),
            reason: "a stream can be read only once; the upload cannot be resumed from it".into(),
        }),
    }
}

/// An object body (a stream of chunks) as a [`SourceReader`], for uploads whose bytes come from
/// another object (a streamed copy).
pub fn reader_from_stream(stream: crate::ports::BodyStream) -> SourceReader {
    Box::new(StreamReader {
        stream,
        chunk: Bytes::new(),
    })
}

pub(crate) struct StreamReader {
    stream: crate::ports::BodyStream,
    chunk: Bytes,
}

impl AsyncRead for StreamReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        loop {
            if !self.chunk.is_empty() {
                let n = self.chunk.len().min(buf.remaining());
                let part = self.chunk.split_to(n);
                buf.put_slice(&part);
                return Poll::Ready(Ok(()));
            }
            match self.stream.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Ok(b))) => self.chunk = b,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(std::io::Error::other(e.to_string())))
                }
            }
        }
    }
}

/// Size and modification time (ns since the epoch) of a file.
pub async fn file_identity(path: &str) -> Result<(u64, i64), String> {
    let md = tokio::fs::metadata(path).await.map_err(|e| e.to_string())?;
    if !md.is_file() {
        return Err("not a regular file".into());
    }
    let mtime = md
        .modified()
        .map_err(|e| e.to_string())?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    Ok((md.len(), mtime))
}
