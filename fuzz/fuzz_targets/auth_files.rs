//! Any bytes as an ACL file (rules, or an error naming its line) and as a password file
//! (entries and warnings); never a panic.
#![no_main]

use std::path::Path;

use culex::auth::{AclFile, AclFileError, PasswordFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(AclFileError::Invalid { file, line, .. }) = AclFile::parse(&text, Path::new("f.acl"))
    {
        assert_eq!(file, Path::new("f.acl"));
        assert!((1..=text.lines().count().max(1)).contains(&line), "line {line}");
    }
    let _ = PasswordFile::parse(&text, Path::new("f.pw"));
});
