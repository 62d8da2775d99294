DROP TABLE slide_mappings;
