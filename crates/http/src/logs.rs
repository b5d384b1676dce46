//! Build logs uploaded with `nix store copy-log --to` (or any `PUT
//! /log/DRV`), one file per derivation, written whole or not at all.

use std::io::Write;
use std::path::{Path, PathBuf};

use cairn_nix::store_path::StorePath;

/// Why a log could not be kept or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogError {
    /// Not a derivation's store path base name.
    #[error("{0}")]
    BadName(String),
    /// The disk failed.
    #[error("build log store: {0}")]
    Io(#[from] std::io::Error),
}

/// A directory of build logs.
pub(crate) struct LogStore {
    dir: PathBuf,
}

impl LogStore {
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(LogStore {
            dir: dir.to_owned(),
        })
    }

    /// The file for `drv`, which must name a derivation (so a name can
    /// never climb out of the directory).
    fn file(&self, drv: &str) -> Result<PathBuf, LogError> {
        let path = StorePath::from_base_name(drv)
            .map_err(|e| LogError::BadName(format!("{drv:?} is not a store path: {e}")))?;
        if !path.name().ends_with(".drv") {
            return Err(LogError::BadName(format!(
                "{drv:?} is not a derivation (.drv)"
            )));
        }
        Ok(self.dir.join(path.base_name()))
    }

    pub(crate) async fn read(&self, drv: &str) -> Result<Option<Vec<u8>>, LogError> {
        let file = self.file(drv)?;
        match tokio::fs::read(&file).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces `drv`'s log with `text`: a temporary file renamed into
    /// place once written and synced.
    pub(crate) async fn write(&self, drv: &str, text: Vec<u8>) -> Result<(), LogError> {
        let file = self.file(drv)?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
            tmp.write_all(&text)?;
            tmp.as_file().sync_data()?;
            tmp.persist(&file).map_err(|e| e.error)?;
            Ok(())
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(())
    }
}
