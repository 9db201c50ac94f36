pub const CID_LEN: usize = 8;
