DROP TABLE lessons;
DROP TABLE modules;
DROP TABLE courses;
