//! The object storage client that keeps checkpoints (`cordon_connectors::objects`) against an
//! S3 stand-in (moto's server) over HTTP: signed requests, listings by level, a multipart
//! upload of a checkpoint-sized object, deletes. The engine's own tests through S3 write small
//! checkpoints only, in one `PUT`.

use std::collections::BTreeMap;

use cordon_connectors::objects::PART_BYTES;
use cordon_connectors::{ObjectError, ObjectStorage};
use cordon_tests::S3Server;

fn options(s3: &S3Server) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("aws_endpoint".to_owned(), s3.endpoint()),
        ("aws_allow_http".to_owned(), "true".to_owned()),
        ("aws_region".to_owned(), "us-east-1".to_owned()),
        ("aws_access_key_id".to_owned(), "test".to_owned()),
        ("aws_secret_access_key".to_owned(), "test".to_owned()),
    ])
}

#[test]
fn objects_round_trip_through_s3_small_and_in_parts() {
    let s3 = S3Server::start();
    let root = ObjectStorage::open(&s3.url("cordon"), &options(&s3)).expect("open");
    let p0 = root.child("requests").child("p0");
    assert_eq!(p0.list().expect("list"), Vec::<String>::new());

    p0.put("small.bin", [b"check".to_vec(), b"point".to_vec()])
        .expect("put");
    assert_eq!(
        p0.get("small.bin").expect("get").as_deref(),
        Some(&b"checkpoint"[..])
    );

    // Two and a half parts, in chunks that cross the part boundaries.
    let whole: Vec<u8> = (0..PART_BYTES * 5 / 2).map(|i| (i % 253) as u8).collect();
    let cuts = [0, 1, PART_BYTES + 5, 2 * PART_BYTES - 1, whole.len()];
    let chunks: Vec<Vec<u8>> = cuts
        .windows(2)
        .map(|w| whole[w[0]..w[1]].to_vec())
        .collect();
    p0.put("big.bin", chunks).expect("multipart put");
    let back = p0.get("big.bin").expect("get").expect("there");
    assert!(
        back == whole,
        "{} bytes back of {}",
        back.len(),
        whole.len()
    );

    let mut names = p0.list().expect("list");
    names.sort();
    assert_eq!(names, ["big.bin", "small.bin"]);
    assert_eq!(root.child("requests").list_dirs().expect("dirs"), ["p0"]);
    assert_eq!(
        s3.keys("cordon/"),
        ["cordon/requests/p0/big.bin", "cordon/requests/p0/small.bin"]
    );
    p0.delete("big.bin").expect("delete");
    p0.delete("big.bin").expect("deleting nothing is no error");
    assert_eq!(p0.list().expect("list"), ["small.bin"]);
    assert_eq!(p0.get("big.bin").expect("get"), None);

    // A bucket that is not there: an error that names it.
    let missing = s3.url("cordon").replace("s3://", "s3://no-such-");
    let err = ObjectStorage::open(&missing, &options(&s3))
        .expect("open makes no request")
        .list()
        .expect_err("no bucket");
    assert!(matches!(err, ObjectError::Request { .. }), "{err}");
    assert!(err.to_string().contains("no-such-"), "{err}");
}
