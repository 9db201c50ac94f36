pub mod http_proxy;
