//! virtio-net wire formats on peer-controlled bytes: `virtio_net_hdr` (10, 12, 20 bytes), control requests and the
//! configuration space. Never panics; what parses re-emits to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use virtio_core::Features;
use virtio_net::wire::{ConfigRepr, CtrlCommand, Header, HeaderLen, HeaderRepr, WireError};

fuzz_target!(|data: &[u8]| {
    // Header: any length; a checked view of at least 10 bytes parses, and re-emitting in each form it covers gives
    // back the same bytes (but the reserved padding of the 20-byte form).
    match Header::new_checked(data) {
        Ok(header) => {
            let repr = HeaderRepr::parse(&header);
            for form in [HeaderLen::Legacy, HeaderLen::Modern, HeaderLen::HashReport] {
                let n = form.bytes();
                if data.len() >= n {
                    let parsed = HeaderRepr::parse(&Header::new_checked(&data[..n]).unwrap());
                    let bytes = parsed.to_bytes(form);
                    // The 20-byte form ends with 2 reserved bytes (`padding_reserved`), emitted as zero.
                    let fields = n.min(18);
                    assert_eq!(&bytes[..fields], &data[..fields]);
                    assert!(bytes[fields..].iter().all(|b| *b == 0));
                }
            }
            let _ = (repr.flags, repr.num_buffers, repr.hash_report);
        }
        Err(e) => assert!(data.len() < HeaderLen::Legacy.bytes(), "{e:?}"),
    }

    // Control request: what parses re-emits to exactly the request bytes.
    match CtrlCommand::parse(data) {
        Ok(command) => {
            assert_eq!(command.wire_len(), data.len());
            let mut out = vec![0u8; data.len()];
            assert_eq!(command.emit(&mut out), Ok(data.len()));
            assert_eq!(&out[..], data);
            let (class, cmd) = command.class_command();
            assert_eq!([class, cmd], data[..2]);
            let _ = command.required_feature();
            assert!(command.emit(&mut out[..data.len() - 1]).is_err());
        }
        Err(WireError::Truncated { .. }) => assert!(data.len() < 2),
        Err(_) => {}
    }

    // Configuration space as a device offering the features of the first 8 bytes presents it.
    if let Some((f, config)) = data.split_first_chunk::<8>() {
        let features = Features::from_bits_retain(u64::from_le_bytes(*f));
        let len = ConfigRepr::len_for(features);
        match ConfigRepr::parse(config, features) {
            Ok(repr) => {
                let mut bytes = vec![0u8; len];
                repr.emit(&mut bytes, features);
                assert_eq!(ConfigRepr::parse(&bytes, features), Ok(repr));
            }
            Err(_) => assert!(config.len() < len),
        }
    }
});
