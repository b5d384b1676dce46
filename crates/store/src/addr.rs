//! PathInfo services by address URL, with the same rules as castore's.
//!
//! | address | PathInfos |
//! | --- | --- |
//! | `memory://` | in memory |
//! | `redb:///ABS/PATH.redb` | embedded redb database |

use std::sync::Arc;

use cairn_castore::addr::{bad, check_options, local_path, parse};

use crate::pathinfoservice::{Error, MemoryPathInfoService, RedbPathInfoService};
use crate::PathInfoService;

/// A PathInfo service for `addr`.
pub fn path_info_service_from_addr(addr: &str) -> Result<Arc<dyn PathInfoService>, Error> {
    let url = parse(addr)?;
    match url.scheme() {
        "memory" => {
            check_options(addr, &url, &[])?;
            Ok(Arc::new(MemoryPathInfoService::new()))
        }
        "redb" => {
            check_options(addr, &url, &[])?;
            Ok(Arc::new(RedbPathInfoService::open(&local_path(
                addr, &url,
            )?)?))
        }
        other => Err(bad(
            addr,
            format!("no path info service for scheme {other:?} (try memory:// or redb:///PATH)"),
        )
        .into()),
    }
}
