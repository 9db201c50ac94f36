pub mod cid;
