mod cluster;
mod codec;
mod harness;
mod scenarios;
mod storage;
