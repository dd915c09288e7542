//! Linux and Windows images built through the Docker Engine API.
